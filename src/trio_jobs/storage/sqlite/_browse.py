"""The dashboard's queries on SQLite (:class:`~trio_jobs.storage.JobBrowser`).

Pages walk an index backwards from the cursor (``seq < cursor``, ``seq`` being
the rowid that ends every index) and stop after one page: no ``OFFSET``. Counts
are exact: they read the ``(status, type)`` index, never the rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..._records import JobStatus, utcnow
from .._browse import (
    JobPage,
    QueueSummary,
    check_minutes,
    check_page_args,
    check_purge_status,
    minute_series,
    parse_seq_cursor,
    window_start,
)
from ._commit import Op
from ._schema import COLUMNS, job_from_row

T = TypeVar("T")

_FINAL = "('completed', 'failed', 'cancelled', 'timeout')"


class BrowseQueries:
    """The :class:`~trio_jobs.storage.JobBrowser` methods of :class:`SQLiteStorage`."""

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read (the store provides it)."""
        raise NotImplementedError

    async def _write(self, op: Op[T]) -> T:
        """Run ``op`` in a group-committed write transaction (the store provides it)."""
        raise NotImplementedError

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
        before = parse_seq_cursor(cursor)
        where, params = _filters(status, job_type, tenant_id)
        if search:
            where += " AND instr(id, ?) > 0"
            params.append(search)
        if before is not None:
            where += " AND seq < ?"
            params.append(before)
        rows = await self._read(
            f"SELECT {COLUMNS}, seq FROM jobs WHERE 1{where} ORDER BY seq DESC LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = tuple(job_from_row(row) for row in rows)
        return JobPage(jobs, str(rows[-1][-1]) if more else None)

    async def summarize(self, *, minutes: int = 60) -> QueueSummary:
        """Count jobs by status and type; see :meth:`~trio_jobs.storage.JobBrowser.summarize`."""
        minutes = check_minutes(minutes)
        now = utcnow()
        start = window_start(now, minutes).timestamp()
        rows = await self._read(
            "SELECT 'count', status, type, COUNT(*) FROM jobs GROUP BY status, type"
            " UNION ALL SELECT 'oldest', NULL, NULL, MIN(created_at) FROM jobs"
            " WHERE status = 'pending' AND run_at <= ?"
            " UNION ALL SELECT 'ends', status, CAST(completed_at / 60 AS INTEGER), COUNT(*)"
            " FROM jobs WHERE completed_at >= ? AND status IN ('completed', 'failed', 'timeout')"
            " GROUP BY 2, 3",
            (time.time(), start),
        )
        counts: dict[tuple[JobStatus, str], int] = {}
        oldest: datetime | None = None
        ends: list[tuple[datetime, int, int]] = []
        for kind, status, key, value in rows:
            if kind == "count":
                counts[(JobStatus(status), key)] = int(value)
            elif kind == "oldest":
                oldest = None if value is None else datetime.fromtimestamp(value, UTC)
            else:
                minute = datetime.fromtimestamp(int(key) * 60, UTC)
                completed = int(value) if status == "completed" else 0
                ends.append((minute, completed, int(value) - completed))
        return QueueSummary(counts, frozenset(), oldest, minute_series(now, minutes, ends))

    async def job_types(self) -> list[str]:
        """Return the job types that have jobs, sorted: one probe of the type index per type."""
        rows = await self._read(
            "WITH RECURSIVE types(type) AS ("
            " SELECT MIN(type) FROM jobs"
            " UNION ALL SELECT (SELECT MIN(type) FROM jobs WHERE type > types.type)"
            " FROM types WHERE types.type IS NOT NULL)"
            " SELECT type FROM types WHERE type IS NOT NULL"
        )
        return [row[0] for row in rows]

    async def purge_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Delete the final jobs that match (see :class:`~trio_jobs.storage.JobBrowser`)."""
        status = check_purge_status(status)
        where, params = _filters(status, job_type, tenant_id)

        def op(conn: sqlite3.Connection, now: float) -> int:
            return conn.execute(
                f"DELETE FROM jobs WHERE status IN {_FINAL}{where}", params
            ).rowcount

        return await self._write(op)


def _filters(
    status: JobStatus | None, job_type: str | None, tenant_id: str | None
) -> tuple[str, list[Any]]:
    where = ""
    params: list[Any] = []
    for column, value in (
        ("status", None if status is None else status.value),
        ("type", job_type),
        ("tenant_id", tenant_id),
    ):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    return where, params
