"""Administration shared by the runner and the client: list, retry and purge jobs.

The same operations as the ``trio-jobs list``, ``retry`` and ``purge`` commands,
with their arguments checked before the store is asked.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ._records import Job, JobStatus
from ._submit import check_seconds
from .storage._base import JobStorage


async def list_jobs(
    store: JobStorage,
    *,
    status: JobStatus | str | None,
    job_type: str | None,
    limit: int | None,
) -> list[Job[Any]]:
    """Return jobs newest first, filtered by ``status`` and ``job_type``, at most ``limit``.

    Raises:
        ValueError: ``status`` is no status, or ``limit`` is negative.
        TypeError: ``job_type`` is not a str, or ``limit`` not an int.
    """
    if status is not None:
        try:
            status = JobStatus(status)
        except ValueError:
            raise ValueError(f"status must be a JobStatus, got {status!r}") from None
    if job_type is not None and not isinstance(job_type, str):
        raise TypeError(f"job_type must be a str or None, got {job_type!r}")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, got {limit!r}")
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
    return await store.list_jobs(status=status, job_type=job_type, limit=limit)


async def purge(
    store: JobStorage, *, older_than: float, statuses: Collection[JobStatus | str] | None
) -> int:
    """Delete final jobs of ``statuses`` that ended over ``older_than`` seconds ago.

    Raises:
        ValueError: ``older_than`` is negative or NaN; ``statuses`` holds a status
            that is not final (or no status at all).
        TypeError: ``older_than`` is not a number; ``statuses`` not a collection.
    """
    check_seconds("older_than", older_than)
    if statuses is None:
        return await store.purge(older_than)
    if isinstance(statuses, str) or not isinstance(statuses, Collection):
        raise TypeError(f"statuses must be a collection of JobStatus, got {statuses!r}")
    chosen: set[JobStatus] = set()
    for item in statuses:
        try:
            status = JobStatus(item)
        except ValueError:
            raise ValueError(f"statuses must hold JobStatus values, got {item!r}") from None
        if not status.is_final:
            raise ValueError(f"statuses must be final statuses, got {status.value!r}")
        chosen.add(status)
    return await store.purge(older_than, statuses=chosen)


async def retry(store: JobStorage, job_id: str) -> bool:
    """Queue a FAILED, TIMEOUT or CANCELLED job again with fresh attempts.

    Raises:
        TypeError: ``job_id`` is not a str.
        ValueError: an active job holds the job's ``unique_key``.
    """
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, got {job_id!r}")
    return await store.requeue(job_id)
