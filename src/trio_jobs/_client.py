"""A producer without handlers: enqueue, inspect and cancel jobs in a shared store."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, final

import trio

from . import _admin
from ._exceptions import JobNotFoundError, RunnerClosedError
from ._flow import HeldBack, JobTypeLimits, check_job_type, check_weight, make_limits
from ._handle import JobHandle
from ._periodic import Clock, schedules_from_rows
from ._records import Job, JobPriority, JobStats, JobStatus, Schedule, WorkerInfo
from ._retry import RetryConfig
from ._submit import build_job, check_seconds, resolve_delay, save_batch, store_jobs
from .storage._base import (
    CancelOutcome,
    JobStorage,
    ScheduleStorage,
    flow_control,
    held_back_jobs,
    held_back_types,
    list_workers,
)


@final
class JobClient:
    """Submits and inspects jobs in a store, without running any (a web app, a script).

    Workers elsewhere — :class:`JobRunner` in other processes, or the
    ``trio-jobs worker`` command — run what it submits. ``async with
    JobClient(storage) as client:`` opens the store and closes it on exit::

        async with JobClient(SQLiteStorage("jobs.db")) as client:
            handle = await client.submit("send-email", {"to": "ada@example.com"})
            print(await handle.wait())   # polls the store until a worker finishes it

    Args:
        storage: The store the workers use.
        default_retry: The retry policy stored with jobs submitted without one.
        default_timeout: Seconds an attempt may run when ``submit`` gives no timeout.
        poll_interval: Seconds between reads of the store while a handle waits for a
            job that another process runs.
    """

    def __init__(
        self,
        storage: JobStorage,
        *,
        default_retry: RetryConfig | None = None,
        default_timeout: float | None = 300.0,
        poll_interval: float = 0.5,
    ) -> None:
        check_seconds("default_timeout", default_timeout, allow_none=True)
        check_seconds("poll_interval", poll_interval, allow_inf=False)
        if poll_interval == 0:
            raise ValueError("poll_interval must be > 0")
        if default_retry is not None and not isinstance(default_retry, RetryConfig):
            raise TypeError(f"default_retry must be a RetryConfig, got {default_retry!r}")
        self._storage = storage
        self._default_retry = default_retry or RetryConfig()
        self._default_timeout = default_timeout
        self._poll_interval = float(poll_interval)
        self._open = False

    @property
    def storage(self) -> JobStorage:
        """The store this client works on."""
        return self._storage

    async def __aenter__(self) -> Self:
        await self._storage.open()
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        with trio.CancelScope(shield=True):
            await self._storage.close()

    async def submit(
        self,
        job_type: str,
        payload: Any = None,
        /,
        *,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
    ) -> JobHandle[Any]:
        """Store a new job for a worker to run; the same arguments as :meth:`JobRunner.submit`.

        No handler check is made: the job waits until a worker that handles
        ``job_type`` claims it.

        Raises:
            RunnerClosedError: the client is not open.
            ValueError, TypeError: an argument is invalid (nothing is stored).
        """
        if not self._open:
            raise RunnerClosedError("the client is not open (use `async with JobClient(...)`)")
        delay = resolve_delay(delay, run_at)
        job = build_job(
            job_type,
            payload,
            priority=priority,
            retry=retry,
            timeout=timeout,
            delay=delay,
            metadata=metadata,
            tenant_id=tenant_id,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
            unique_key=unique_key,
        )
        if unique_key is not None:
            (holder,) = await store_jobs(self._storage, [job], delay)
            return JobHandle(holder, job.type, self, deduplicated=holder != job.id)
        await self._storage.save(job, delay=delay)
        return JobHandle(job.id, job.type, self)

    async def submit_many(
        self,
        job_type: str,
        payloads: Iterable[Any],
        /,
        *,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
    ) -> list[JobHandle[Any]]:
        """Store one job per payload, all in one transaction or none.

        See :meth:`JobRunner.submit_many`.

        Raises:
            RunnerClosedError: the client is not open.
            ValueError, TypeError: an argument or payload is invalid (nothing is stored).
        """
        if not self._open:
            raise RunnerClosedError("the client is not open (use `async with JobClient(...)`)")
        saved = await save_batch(
            self._storage,
            job_type,
            payloads,
            priority=priority,
            retry=retry,
            timeout=timeout,
            delay=delay,
            metadata=metadata,
            tenant_id=tenant_id,
            run_at=run_at,
            unique_key=unique_key,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
        )
        return [
            JobHandle(holder, job_type, self, deduplicated=holder != job.id)
            for job, holder in saved
        ]

    async def schedules(self) -> list[Schedule]:
        """Return the schedules that runners stored, by key (see :meth:`JobRunner.add_schedule`)."""
        store = self._storage
        rows = await store.list_schedules() if isinstance(store, ScheduleStorage) else []
        return schedules_from_rows(rows, {}, Clock().now())

    async def get_job(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        return await self._storage.get(job_id)

    async def get_handle(self, job_id: str) -> JobHandle[Any]:
        """Return a handle on an existing job.

        Raises:
            JobNotFoundError: the store knows no such job.
        """
        job = await self._storage.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return JobHandle(job.id, job.type, self)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job: at once if it waits; a running one's worker is told to stop it.

        Returns:
            True when the cancellation took effect or was delivered; False for an
            unknown or already final job.
        """
        return await self._storage.request_cancel(job_id) is not CancelOutcome.NOTHING

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return snapshots of jobs in the store, newest first (``trio-jobs list``).

        Args:
            status: Only jobs with this status.
            job_type: Only jobs of this type.
            limit: At most this many; ``None`` for all.

        Raises:
            ValueError: an unknown ``status`` or a negative ``limit``.
            TypeError: ``job_type`` or ``limit`` has the wrong type.
        """
        return await _admin.list_jobs(self._storage, status=status, job_type=job_type, limit=limit)

    async def retry(self, job_id: str) -> bool:
        """Run a FAILED, TIMEOUT or CANCELLED job again, with fresh attempts (``trio-jobs retry``).

        Returns:
            True if the job was queued again; False for an unknown job or one that
            is not FAILED, TIMEOUT or CANCELLED.

        Raises:
            ValueError: the job has a ``unique_key`` that another job, pending,
                running or retrying, holds now; nothing changes (the message names
                the key and that job).
        """
        return await _admin.retry(self._storage, job_id)

    async def purge(
        self,
        *,
        older_than: float = 0.0,
        statuses: Collection[JobStatus | str] | None = None,
    ) -> int:
        """Delete final jobs that ended more than ``older_than`` seconds ago (``trio-jobs purge``).

        Args:
            older_than: Keep jobs that ended more recently than this many seconds ago.
            statuses: Final statuses to delete; ``None`` for all four.

        Returns:
            How many jobs were deleted.

        Raises:
            ValueError: a negative ``older_than``, or a status that is not final.
        """
        return await _admin.purge(self._storage, older_than=older_than, statuses=statuses)

    async def workers(self) -> list[WorkerInfo]:
        """Return the live runners on the store (see :meth:`JobRunner.workers`).

        Raises:
            NotImplementedError: the store keeps no workers table.
        """
        return await list_workers(self._storage)

    async def set_limits(
        self,
        job_type: str,
        *,
        max_running: int | None = None,
        max_running_per_tenant: int | None = None,
        rate: tuple[int, float] | None = None,
        fair_tenants: bool = False,
    ) -> None:
        """Store the flow limits of ``job_type`` (see :meth:`JobRunner.set_limits`).

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
        await flow_control(self._storage).set_limits(limits)

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the stored flow settings of ``job_type`` (see :meth:`JobRunner.get_limits`)."""
        check_job_type(job_type)
        return await flow_control(self._storage).get_limits(job_type)

    async def pause(self, job_type: str) -> None:
        """Stop every runner from claiming ``job_type`` (see :meth:`JobRunner.pause`)."""
        check_job_type(job_type)
        await flow_control(self._storage).set_paused(job_type, True)

    async def resume(self, job_type: str) -> None:
        """Let runners claim ``job_type`` again (see :meth:`JobRunner.resume`)."""
        check_job_type(job_type)
        await flow_control(self._storage).set_paused(job_type, False)

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Give ``tenant_id`` a share in fair turns (see :meth:`JobRunner.set_tenant_weight`)."""
        tenant_id, weight = check_weight(tenant_id, weight)
        await flow_control(self._storage).set_tenant_weight(tenant_id, weight)

    async def held_back(self, job: Job[Any] | str) -> HeldBack | None:
        """Why ``job`` (a job or its id) waits although it is due, or None.

        It is held back when a flow limit stops it from starting now: its type is
        paused, at ``max_running``, out of ``rate`` starts in the window, or its
        tenant is at ``max_running_per_tenant``. None when it is not ready, is
        merely waiting for a free worker, or the store keeps no flow settings.

        Raises:
            JobNotFoundError: no job has the id given.
        """
        if isinstance(job, str):
            found = await self._storage.get(job)
            if found is None:
                raise JobNotFoundError(job)
            job = found
        return (await held_back_jobs(self._storage, [job])).get(job.id)

    async def held_back_types(self) -> dict[str, HeldBack]:
        """The job types no attempt of which may start now, and why (see :meth:`held_back`).

        Paused types, types at ``max_running``, and types out of ``rate`` starts;
        empty when the store keeps no flow settings.
        """
        return await held_back_types(self._storage)

    async def stats(self) -> JobStats:
        """Return counts of jobs by status."""
        return await self._storage.get_stats()

    async def _wait_final(self, job_id: str) -> Job[Any]:
        while True:
            job = await self._storage.get(job_id)
            if job is None:
                raise JobNotFoundError(job_id)
            if job.status.is_final:
                return job
            await self._storage.wait_for_change(job_id, self._poll_interval)

    def _local_error(self, job_id: str) -> BaseException | None:
        return None
