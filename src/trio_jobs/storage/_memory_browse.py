"""What a dashboard reads from the in-memory store: pages, summaries, purges.

:class:`MemoryBrowsing` is a base class of :class:`~trio_jobs.storage.MemoryStorage`
(see ``_memory``), which owns the jobs it reads; it implements
:class:`~trio_jobs.storage.JobBrowser` with the helpers of ``_browse``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from .._records import Job, JobStatus, utcnow
from ._browse import (
    JobPage,
    QueueSummary,
    browse_in_memory,
    check_minutes,
    check_page_args,
    check_purge_status,
    matches,
    summarize_in_memory,
)


class MemoryBrowsing:
    """The :class:`~trio_jobs.storage.JobBrowser` half of :class:`~trio_jobs.storage.MemoryStorage`.

    A mixin: ``_jobs`` is created by ``MemoryStorage.__init__``.
    """

    #: Every job, by id, oldest first.
    _jobs: dict[str, Job[Any]]

    if TYPE_CHECKING:

        def _uncount(self, job: Job[Any]) -> None:
            """Take a job out of the counts before it is dropped (``MemoryStorage``)."""

    async def browse_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        tenant_id: str | None = None,
        search: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Return a page of jobs, newest first; see :class:`~trio_jobs.storage.JobBrowser`."""
        status = check_page_args(limit, status)
        await trio.lowlevel.checkpoint()
        return browse_in_memory(
            self._jobs.values(),
            status=status,
            job_type=job_type,
            tenant_id=tenant_id,
            search=search,
            cursor=cursor,
            limit=limit,
        )

    async def summarize(self, *, minutes: int = 60) -> QueueSummary:
        """Count jobs by status and type; see :meth:`~trio_jobs.storage.JobBrowser.summarize`."""
        minutes = check_minutes(minutes)
        await trio.lowlevel.checkpoint()
        return summarize_in_memory(self._jobs.values(), utcnow(), minutes)

    async def job_types(self) -> list[str]:
        """Return the job types that have jobs, sorted."""
        await trio.lowlevel.checkpoint()
        return sorted({job.type for job in self._jobs.values()})

    async def purge_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Delete the final jobs that match (see :class:`~trio_jobs.storage.JobBrowser`)."""
        status = check_purge_status(status)
        await trio.lowlevel.checkpoint()
        doomed = [
            job.id
            for job in self._jobs.values()
            if job.status.is_final and matches(job, status, job_type, tenant_id)
        ]
        for job_id in doomed:
            self._uncount(self._jobs.pop(job_id))
        return len(doomed)
