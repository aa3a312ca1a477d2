"""Administration in the in-memory store: reading, counting, overwriting, requeueing, purging.

:class:`MemoryAdmin` is a base class of :class:`~trio_jobs.storage.MemoryStorage`
(see ``_memory``), which owns the jobs it reads and writes: the operator's queries
and overwrites (``trio-jobs list``, ``stats``, ``retry``, ``purge``, id prefixes),
off the runner's hot path. Writes go through ``MemoryStorage._put``, which keeps
the counts right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import trio

from .._records import Job, JobStats, JobStatus, replace, utcnow
from ._base import key_held

# The same as ``_memory``'s (which imports this module, so they are not imported from it).
_WAITING = (JobStatus.PENDING, JobStatus.RETRYING)
_RUNNING = JobStatus.RUNNING


class MemoryAdmin:
    """The administration half of :class:`~trio_jobs.storage.MemoryStorage`.

    A mixin: the attributes below are created by ``MemoryStorage.__init__``.
    """

    #: Every job, by id, oldest first.
    _jobs: dict[str, Job[Any]]
    #: unique_key -> the active (pending, running, retrying) job holding it.
    _unique: dict[str, str]
    #: The leases of running jobs: (worker_id, expiry on the Trio clock), by job id.
    _leases: dict[str, tuple[str, float]]
    _cancel_requested: set[str]
    #: The events set when a job changes, by job id (see wait_for_change).
    _watchers: dict[str, trio.Event]
    #: Jobs by status, and the completed jobs' execution times: kept by ``_put``.
    _counts: Counter[JobStatus]
    _completed_time: float
    _completed_timed: int

    if TYPE_CHECKING:

        def _put(self, job: Job[Any]) -> None:
            """Write a job's record, keeping the counts right (``MemoryStorage``)."""

        def _uncount(self, job: Job[Any]) -> None:
            """Take a job out of the counts before it is dropped (``MemoryStorage``)."""

        def _enqueue(self, job: Job[Any], delay: float, *, wake: bool = True) -> None:
            """Queue a waiting job, ready or delayed (``MemoryStorage``)."""

        def _unqueue(self, job_id: str) -> None:
            """Forget a job's place in the ready or delayed queues (``MemoryStorage``)."""

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Count jobs by status (over ``job_types`` only, when given)."""
        await trio.lowlevel.checkpoint()
        if job_types is None:
            counts = self._counts
            timed, total_time = self._completed_timed, self._completed_time
        else:
            types = set(job_types)
            jobs = [job for job in self._jobs.values() if job.type in types]
            counts = Counter(job.status for job in jobs)
            times = [
                job.execution_time
                for job in jobs
                if job.status is JobStatus.COMPLETED and job.execution_time is not None
            ]
            timed, total_time = len(times), sum(times)
        final = sum(counts[s] for s in JobStatus if s.is_final)
        return JobStats(
            pending=counts[JobStatus.PENDING],
            running=counts[JobStatus.RUNNING],
            retrying=counts[JobStatus.RETRYING],
            completed=counts[JobStatus.COMPLETED],
            failed=counts[JobStatus.FAILED],
            cancelled=counts[JobStatus.CANCELLED],
            timeout=counts[JobStatus.TIMEOUT],
            total_processed=final,
            average_execution_time=total_time / timed if timed else None,
        )

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Return jobs with ``status``, oldest first."""
        await trio.lowlevel.checkpoint()
        status = JobStatus(status)
        found = [job for job in self._jobs.values() if job.status is status]
        return found if limit is None else found[:limit]

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return jobs, newest first, filtered by status and type."""
        await trio.lowlevel.checkpoint()
        found: list[Job[Any]] = []
        for job in reversed(self._jobs.values()):
            if status is not None and job.status != status:
                continue
            if job_type is not None and job.type != job_type:
                continue
            found.append(job)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def waiting_by_type(self) -> dict[str, int]:
        """Count the PENDING and RETRYING jobs of each type (types with none are left out)."""
        await trio.lowlevel.checkpoint()
        counts: dict[str, int] = {}
        for job in self._jobs.values():
            if job.status in _WAITING:
                counts[job.type] = counts.get(job.type, 0) + 1
        return counts

    async def job_ids_starting_with(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Return up to ``limit`` job ids that start with ``prefix``, in order."""
        if not prefix:
            raise ValueError("prefix must not be empty")
        await trio.lowlevel.checkpoint()
        return sorted(job_id for job_id in self._jobs if job_id.startswith(prefix))[:limit]

    async def update(self, job: Job[Any]) -> None:
        """Overwrite a job's record (administrative; not fenced).

        A job that is no longer RUNNING loses its lease and any cancel request, so
        rescue never brings a job an operator finished back to life.
        """
        await trio.lowlevel.checkpoint()
        self._unqueue(job.id)
        if job.status is not _RUNNING:
            self._leases.pop(job.id, None)
            self._cancel_requested.discard(job.id)
        self._put(job)
        if job.status in _WAITING:
            delay = 0.0
            if job.run_at is not None:
                delay = max(0.0, (job.run_at - utcnow()).total_seconds())
            self._enqueue(job, delay)

    async def mark_running(self, job_id: str) -> bool:
        """Move a PENDING job to RUNNING (no lease); True only for the caller that did it."""
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.PENDING:
            return False
        self._unqueue(job_id)
        self._put(replace(job, status=_RUNNING, attempts=job.attempts + 1, started_at=utcnow()))
        return True

    async def delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed."""
        await trio.lowlevel.checkpoint()
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        self._uncount(job)
        self._unqueue(job_id)
        self._leases.pop(job_id, None)
        self._cancel_requested.discard(job_id)
        watcher = self._watchers.pop(job_id, None)
        if watcher is not None:
            watcher.set()
        return True

    async def requeue(self, job_id: str) -> bool:
        """Give a FAILED, TIMEOUT or CANCELLED job a fresh start."""
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(job_id)
        if job is None or job.status not in (
            JobStatus.FAILED,
            JobStatus.TIMEOUT,
            JobStatus.CANCELLED,
        ):
            return False
        key = job.unique_key
        holder = None if key is None else self._unique.get(key)
        if key is not None and holder is not None and holder != job_id:
            raise ValueError(key_held(job_id, key, holder))
        fresh = replace(
            job,
            status=JobStatus.PENDING,
            attempts=0,
            started_at=None,
            completed_at=None,
            run_at=None,
            result=None,
            progress=None,
            progress_message=None,
        )
        self._put(fresh)
        self._enqueue(fresh, 0.0)
        return True

    async def purge(
        self, older_than: float, *, statuses: Collection[JobStatus] | None = None
    ) -> int:
        """Delete final jobs (of ``statuses``) completed more than ``older_than`` seconds ago."""
        await trio.lowlevel.checkpoint()
        cutoff = utcnow() - timedelta(seconds=older_than)
        wanted = frozenset(statuses) if statuses is not None else None
        old = [
            job.id
            for job in self._jobs.values()
            if job.status.is_final
            and (wanted is None or job.status in wanted)
            and job.completed_at is not None
            and job.completed_at < cutoff
        ]
        for job_id in old:
            self._uncount(self._jobs.pop(job_id))
        return len(old)
