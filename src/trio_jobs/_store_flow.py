"""Flow control on a store: limits, pauses and tenant weights, kept in the store.

:class:`StoreFlowControl` is a base class of :class:`~trio_jobs.JobRunner` and of
:class:`~trio_jobs.JobClient`: its methods check their arguments, pass them to the
store's :class:`~trio_jobs.storage.FlowControl`, and wake a runner's in-process
scheduler when a change may let a held-back job start.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from ._exceptions import JobNotFoundError
from ._flow import HeldBack, JobTypeLimits, check_job_type, check_weight, make_limits
from ._records import Job
from .storage._base import (
    InProcessStorage,
    JobStorage,
    flow_control,
    held_back_jobs,
    held_back_types,
)


class StoreFlowControl:
    """Flow-control methods shared by :class:`~trio_jobs.JobRunner` and ``JobClient``.

    A mixin: its class sets ``_in_process`` and defines ``_store``.
    """

    #: The store, when it is a runner's in-process one (woken on changes); else None.
    _in_process: InProcessStorage | None

    if TYPE_CHECKING:

        def _store(self) -> AbstractAsyncContextManager[JobStorage]:
            """The store, opened for the duration if need be."""

    async def set_limits(
        self,
        job_type: str,
        *,
        max_running: int | None = None,
        max_running_per_tenant: int | None = None,
        rate: tuple[int, float] | None = None,
        fair_tenants: bool = False,
    ) -> None:
        """Store the flow limits of ``job_type``, obeyed by every runner on the store.

        Replaces the type's previous limits (a pause stays as it is). Limits are
        enforced when jobs are claimed: never more than ``max_running`` attempts
        of the type run in total, never more than ``max_running_per_tenant`` for
        one ``tenant_id``, never more than ``rate[0]`` start in any
        ``rate[1]``-second window. A job held back stays PENDING, holds no slot,
        and holds up no job of another type or tenant. With ``fair_tenants``,
        tenants take turns in proportion to their weights (see
        :meth:`set_tenant_weight`) among ready jobs of the same priority.

        Args:
            job_type: The job type.
            max_running: Attempts of the type running at once, in total (>= 1).
            max_running_per_tenant: The same, per tenant (>= 1).
            rate: ``(starts, seconds)``: starts allowed per window of ``seconds``.
            fair_tenants: Take turns between tenants instead of FIFO across them.

        Raises:
            TypeError: an argument has the wrong type (named in the message).
            ValueError: an argument is out of range (named in the message).
            NotImplementedError: the store does not implement flow control.
        """
        limits = make_limits(
            job_type,
            max_running=max_running,
            max_running_per_tenant=max_running_per_tenant,
            rate=rate,
            fair_tenants=fair_tenants,
        )
        async with self._store() as store:
            await flow_control(store).set_limits(limits)
        self._wake_flow()

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the stored flow settings of ``job_type``, ``paused`` included.

        Raises:
            NotImplementedError: the store does not implement flow control.
        """
        check_job_type(job_type)
        async with self._store() as store:
            return await flow_control(store).get_limits(job_type)

    async def pause(self, job_type: str) -> None:
        """Stop every runner on the store from claiming ``job_type`` until :meth:`resume`.

        Running attempts finish; pending jobs of the type stay PENDING.

        Raises:
            NotImplementedError: the store does not implement flow control.
        """
        check_job_type(job_type)
        async with self._store() as store:
            await flow_control(store).set_paused(job_type, True)

    async def resume(self, job_type: str) -> None:
        """Let runners claim ``job_type`` again after :meth:`pause`.

        Raises:
            NotImplementedError: the store does not implement flow control.
        """
        check_job_type(job_type)
        async with self._store() as store:
            await flow_control(store).set_paused(job_type, False)
        self._wake_flow()

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Give ``tenant_id`` a share ``weight`` in fair turns (the default is 1.0).

        With ``fair_tenants`` on a type, a tenant of weight 2 starts twice as many
        jobs as one of weight 1 while both have jobs ready.

        Raises:
            TypeError: ``tenant_id`` is not a str or ``weight`` not a number.
            ValueError: ``weight`` is not positive and finite.
            NotImplementedError: the store does not implement flow control.
        """
        tenant_id, weight = check_weight(tenant_id, weight)
        async with self._store() as store:
            await flow_control(store).set_tenant_weight(tenant_id, weight)

    async def held_back(self, job: Job[Any] | str) -> HeldBack | None:
        """Why ``job`` (a job or its id) waits although it is due, or None.

        It is held back when a flow limit stops it from starting now: its type is
        paused, at ``max_running``, out of ``rate`` starts in the window, or its
        tenant is at ``max_running_per_tenant``. None when it is not ready, is
        merely waiting for a free worker, or the store keeps no flow settings.

        Raises:
            JobNotFoundError: no job has the id given.
        """
        async with self._store() as store:
            if isinstance(job, str):
                found = await store.get(job)
                if found is None:
                    raise JobNotFoundError(job)
                job = found
            return (await held_back_jobs(store, [job])).get(job.id)

    async def held_back_types(self) -> dict[str, HeldBack]:
        """The job types no attempt of which may start now, and why (see :meth:`held_back`).

        Paused types, types at ``max_running``, and types out of ``rate`` starts;
        empty when the store keeps no flow settings.
        """
        async with self._store() as store:
            return await held_back_types(store)

    def _wake_flow(self) -> None:
        if self._in_process is not None:
            self._in_process.wake()
