"""Administration on a store: reading jobs, workers and counts; retrying and purging.

:class:`StoreAdmin` is a base class of :class:`~trio_jobs.JobRunner` and of
:class:`~trio_jobs.JobClient`: plain passes to the store, or to the helpers of
``_admin``, which work whether or not a runner is in its block.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from . import _admin
from ._records import Job, JobStats, JobStatus, WorkerInfo
from .storage._base import InProcessStorage, JobStorage, list_workers


class StoreAdmin:
    """Administration methods shared by :class:`~trio_jobs.JobRunner` and ``JobClient``.

    A mixin: its class sets ``_in_process`` and defines ``_store``.
    """

    #: The store, when it is a runner's in-process one (woken on changes); else None.
    _in_process: InProcessStorage | None

    if TYPE_CHECKING:

        def _store(self) -> AbstractAsyncContextManager[JobStorage]:
            """The store, opened for the duration if need be."""

    async def get_job(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        async with self._store() as store:
            return await store.get(job_id)

    async def workers(self) -> list[WorkerInfo]:
        """Return the live runners on the store (a runner in its block among them).

        From the store's workers table: a runner's row is written when it enters
        its block, renewed by its heartbeats, and removed when it leaves; a runner
        that died disappears once its lease would have expired.

        Raises:
            NotImplementedError: the store keeps no workers table (a custom store
                without :class:`WorkerRegistry`).
        """
        async with self._store() as store:
            return await list_workers(store)

    async def stats(self) -> JobStats:
        """Return counts of jobs by status, from the store."""
        async with self._store() as store:
            return await store.get_stats()

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
        async with self._store() as store:
            return await _admin.list_jobs(store, status=status, job_type=job_type, limit=limit)

    async def retry(self, job_id: str) -> bool:
        """Run a FAILED, TIMEOUT or CANCELLED job again, with fresh attempts (``trio-jobs retry``).

        The job goes back to PENDING with its attempts at 0 and its result and
        progress cleared; its ``last_error`` is kept until the next attempt ends.

        Returns:
            True if the job was queued again; False for an unknown job or one that
            is not FAILED, TIMEOUT or CANCELLED.

        Raises:
            ValueError: the job has a ``unique_key`` that another job, pending,
                running or retrying, holds now; nothing changes (the message names
                the key and that job).
        """
        async with self._store() as store:
            requeued = await _admin.retry(store, job_id)
        if requeued and self._in_process is not None:
            self._in_process.wake()
        return requeued

    async def purge(
        self,
        *,
        older_than: float = 0.0,
        statuses: Collection[JobStatus | str] | None = None,
    ) -> int:
        """Delete final jobs that ended more than ``older_than`` seconds ago (``trio-jobs purge``).

        Args:
            older_than: Keep jobs that ended more recently than this many seconds ago.
            statuses: Final statuses to delete; ``None`` for all four (COMPLETED,
                FAILED, CANCELLED, TIMEOUT).

        Returns:
            How many jobs were deleted.

        Raises:
            ValueError: a negative ``older_than``, or a status that is not final.
        """
        async with self._store() as store:
            return await _admin.purge(store, older_than=older_than, statuses=statuses)
