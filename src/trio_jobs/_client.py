"""A producer without handlers: enqueue, inspect and cancel jobs in a shared store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self, final

import trio

from ._exceptions import JobNotFoundError, RunnerClosedError
from ._handle import JobHandle
from ._periodic import Clock, schedules_from_rows
from ._records import Job, JobPriority, Schedule
from ._retry import RetryConfig
from ._store_admin import StoreAdmin
from ._store_flow import StoreFlowControl
from ._submit import build_job, check_seconds, resolve_delay, save_batch, store_jobs
from .storage._base import (
    CancelOutcome,
    JobStorage,
    ScheduleStorage,
)


@final
class JobClient(StoreAdmin, StoreFlowControl):
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
        self._in_process = None  # (a runner's in-process store only: nothing to wake)

    @property
    def storage(self) -> JobStorage:
        """The store this client works on."""
        return self._storage

    @asynccontextmanager
    async def _store(self) -> AsyncIterator[JobStorage]:
        # For the methods shared with JobRunner (StoreAdmin, StoreFlowControl).
        yield self._storage

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
