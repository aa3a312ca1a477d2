"""What a dashboard reads from a store: pages of jobs, a summary of the queue, purges.

:class:`~trio_jobs.storage.JobBrowser` is optional, like :class:`~trio_jobs.storage.WorkerRegistry`:
the three built-in stores implement it, and ``trio_jobs.dashboard`` needs it.
Its queries stay fast on big tables:

- :meth:`~trio_jobs.storage.JobBrowser.browse_jobs` pages with a *keyset* (the cursor is the last
  job's insertion order), never with ``OFFSET``, so the thousandth page costs
  what the first does;
- :meth:`~trio_jobs.storage.JobBrowser.summarize` counts the jobs by status and type. A durable
  store may *estimate* the counts of a status holding very many jobs (it says
  which in :attr:`QueueSummary.estimated`); the unfinished statuses are exact
  whenever they are not huge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import attrs

from .._records import Job, JobStatus

#: The most jobs :meth:`~trio_jobs.storage.JobBrowser.browse_jobs` returns in one page.
MAX_PAGE = 500
#: The statuses a purge may delete.
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMEOUT)


@attrs.frozen
class JobPage:
    """One page of :meth:`~trio_jobs.storage.JobBrowser.browse_jobs`, newest job first.

    Attributes:
        jobs: The jobs of this page.
        next_cursor: Pass it as ``cursor`` for the next (older) page; ``None`` on the last.
    """

    jobs: tuple[Job[Any], ...]
    next_cursor: str | None


@attrs.frozen
class MinuteCount:
    """How many jobs ended in one minute.

    Attributes:
        minute: The minute's start (UTC).
        completed: Jobs that ended COMPLETED in it.
        failed: Jobs that ended FAILED or TIMEOUT in it.
    """

    minute: datetime
    completed: int
    failed: int


@attrs.frozen
class QueueSummary:
    """The state of a queue at a glance, as ``JobBrowser.summarize`` reads it.

    Attributes:
        counts: Jobs by ``(status, job_type)``; pairs with no job are left out.
        estimated: The statuses whose counts are estimates (see the module docs).
        oldest_pending_at: When the oldest PENDING job that may run now (its delay,
            if any, is over) was created, or ``None``.
        per_minute: One entry per minute of the window, oldest first, the current
            (partial) minute last.
    """

    counts: Mapping[tuple[JobStatus, str], int]
    estimated: frozenset[JobStatus] = frozenset()
    oldest_pending_at: datetime | None = None
    per_minute: tuple[MinuteCount, ...] = ()

    def by_status(self) -> dict[JobStatus, int]:
        """Return the counts summed over job types, every status present."""
        totals = dict.fromkeys(JobStatus, 0)
        for (status, _), count in self.counts.items():
            totals[status] += count
        return totals

    def job_types(self) -> list[str]:
        """Return the job types that have jobs, sorted."""
        return sorted({job_type for _, job_type in self.counts})


@runtime_checkable
class JobBrowser(Protocol):
    """What a store adds for dashboards (see the module docs). All methods checkpoint."""

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
        """Return a page of jobs, newest first, matching every filter given.

        Args:
            status: Only jobs in this status.
            job_type: Only jobs of this type.
            tenant_id: Only jobs of this tenant.
            search: Only jobs whose id contains this text.
            cursor: The ``next_cursor`` of the previous page; ``None`` for the first.
            limit: Jobs per page, 1 to 500 (``MAX_PAGE``).

        Raises:
            ValueError: ``limit`` is out of range or ``cursor`` is not one this store made.
        """
        ...

    async def summarize(self, *, minutes: int = 60) -> QueueSummary:
        """Return counts by status and type, the oldest pending job, and ``minutes`` of throughput.

        Raises:
            ValueError: ``minutes`` is not between 1 and 1440.
        """
        ...

    async def job_types(self) -> list[str]:
        """Return the job types that have jobs, sorted (an index walk, not a table scan)."""
        ...

    async def purge_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Delete the *final* jobs matching every filter given; return how many.

        Unfinished jobs are never deleted.

        Raises:
            ValueError: ``status`` is not a final status.
        """
        ...


def check_page_args(limit: int, status: JobStatus | None) -> JobStatus | None:
    """Validate ``limit`` and ``status`` of :meth:`~trio_jobs.storage.JobBrowser.browse_jobs`."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit!r}")
    return None if status is None else JobStatus(status)


def parse_seq_cursor(cursor: str | None) -> int | None:
    """The insertion order a durable store's cursor names (``None``: the first page).

    Raises:
        ValueError: ``cursor`` is not a cursor a store made.
    """
    if cursor is None:
        return None
    if not (isinstance(cursor, str) and cursor.isascii() and cursor.isdigit()):
        raise ValueError(f"invalid cursor {cursor!r}")
    return int(cursor)


def check_minutes(minutes: int) -> int:
    """Validate the window of :meth:`~trio_jobs.storage.JobBrowser.summarize`."""
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise TypeError(f"minutes must be an int, got {minutes!r}")
    if not 1 <= minutes <= 1440:
        raise ValueError(f"minutes must be between 1 and 1440, got {minutes!r}")
    return minutes


def check_purge_status(status: JobStatus | None) -> JobStatus | None:
    """Validate the status filter of :meth:`~trio_jobs.storage.JobBrowser.purge_jobs`."""
    if status is None:
        return None
    status = JobStatus(status)
    if not status.is_final:
        raise ValueError(f"only final jobs can be purged, not {status.value!r} ones")
    return status


def minute_series(
    now: datetime, minutes: int, ends: Iterable[tuple[datetime, int, int]]
) -> tuple[MinuteCount, ...]:
    """Spread ``(minute start, completed, failed)`` rows over every minute of the window.

    Minutes without a row count zero; rows outside the window are ignored.
    """
    last = now.replace(second=0, microsecond=0)
    first = last - timedelta(minutes=minutes - 1)
    totals: dict[datetime, list[int]] = {}
    for minute, completed, failed in ends:
        minute = minute.replace(second=0, microsecond=0)
        entry = totals.setdefault(minute, [0, 0])
        entry[0] += int(completed)
        entry[1] += int(failed)
    series = []
    for i in range(minutes):
        minute = first + timedelta(minutes=i)
        completed, failed = totals.get(minute, (0, 0))
        series.append(MinuteCount(minute, completed, failed))
    return tuple(series)


def window_start(now: datetime, minutes: int) -> datetime:
    """The start of the first minute of a ``minutes`` window ending now."""
    return now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)


# -- the in-memory versions (MemoryStorage) ------------------------------------------------


def matches(
    job: Job[Any],
    status: JobStatus | None,
    job_type: str | None,
    tenant_id: str | None,
    search: str | None = None,
) -> bool:
    """Whether ``job`` passes the filters of :meth:`~trio_jobs.storage.JobBrowser.browse_jobs`."""
    return (
        (status is None or job.status is status)
        and (job_type is None or job.type == job_type)
        and (tenant_id is None or job.tenant_id == tenant_id)
        and (not search or search in job.id)
    )


def browse_in_memory(
    jobs: Iterable[Job[Any]],
    *,
    status: JobStatus | None,
    job_type: str | None,
    tenant_id: str | None,
    search: str | None,
    cursor: str | None,
    limit: int,
) -> JobPage:
    """``browse_jobs`` over jobs held in memory, keyed by (created_at, id)."""
    after: tuple[str, str] | None = None
    if cursor is not None:
        stamp, sep, last_id = cursor.partition("|")
        try:
            datetime.fromisoformat(stamp)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"invalid cursor {cursor!r}")
        after = (stamp, last_id)
    keyed = sorted(
        ((job.created_at.isoformat(), job.id, job) for job in jobs),
        key=lambda entry: (entry[0], entry[1]),
        reverse=True,
    )
    page: list[Job[Any]] = []
    for stamp, job_id, job in keyed:
        if after is not None and (stamp, job_id) >= after:
            continue
        if matches(job, status, job_type, tenant_id, search):
            page.append(job)
            if len(page) > limit:
                break
    more = len(page) > limit
    page = page[:limit]
    next_cursor = f"{page[-1].created_at.isoformat()}|{page[-1].id}" if more else None
    return JobPage(tuple(page), next_cursor)


def summarize_in_memory(jobs: Iterable[Job[Any]], now: datetime, minutes: int) -> QueueSummary:
    """``summarize`` over jobs held in memory (all counts exact)."""
    counts: dict[tuple[JobStatus, str], int] = {}
    oldest: datetime | None = None
    start = window_start(now, minutes)
    ends: list[tuple[datetime, int, int]] = []
    for job in jobs:
        key = (job.status, job.type)
        counts[key] = counts.get(key, 0) + 1
        waiting = job.status is JobStatus.PENDING and (job.run_at is None or job.run_at <= now)
        if waiting and (oldest is None or job.created_at < oldest):
            oldest = job.created_at
        done = job.completed_at
        if done is not None and done >= start:
            if job.status is JobStatus.COMPLETED:
                ends.append((done, 1, 0))
            elif job.status in (JobStatus.FAILED, JobStatus.TIMEOUT):
                ends.append((done, 0, 1))
    return QueueSummary(counts, frozenset(), oldest, minute_series(now, minutes, ends))
