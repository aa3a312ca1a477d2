"""The dashboard's queries on PostgreSQL (:class:`~trio_jobs.storage.JobBrowser`).

Pages walk indexes ending in ``seq`` backwards from the cursor (``seq < cursor``)
and stop after one page: no ``OFFSET``, whatever the page. A page of every status
merges one such walk per status (:func:`~._sql.newest_first`). Counting a status with a
million jobs would read a million index entries on every refresh, so
:meth:`BrowseQueries.summarize` counts at most :data:`SAMPLE` of each status's
newest jobs; a status with more is *estimated*: its total from the planner's
statistics (``pg_stats``, kept by autovacuum's ANALYZE), split over job types as
in the sample.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

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
from . import _rows as pg_rows
from ._sql import JOB_COLUMNS, newest_first

if TYPE_CHECKING:
    from ._connect import Connection

T = TypeVar("T")

#: Each status's newest jobs counted exactly; beyond this its counts are estimates.
SAMPLE: Final = 10_000
_FINAL = "('completed', 'failed', 'cancelled', 'timeout')"


class BrowseQueries:
    """The :class:`~trio_jobs.storage.JobBrowser` methods of :class:`PostgresStorage`."""

    _schema: str

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a pooled connection in a worker thread (the store provides it)."""
        raise NotImplementedError

    @property
    def _jobs_table(self) -> str:
        return f'"{self._schema}".jobs'

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
        params["limit"] = limit + 1
        if search:
            where.append("strpos(id, %(search)s) > 0")
            params["search"] = search
        if before is not None:
            where.append("seq < %(before)s")
            params["before"] = before
        if status is None and tenant_id is None:
            # One walk per status, merged (no index on seq alone: see migration 7).
            statement = newest_first(self._jobs_table, " AND ".join(where), "%(limit)s")
        else:
            # jobs_status_idx, jobs_type_status_idx or jobs_tenant_seq_idx, in order
            # (running jobs: jobs_worker_idx, then sorted; they are few).
            statement = (
                f"SELECT {JOB_COLUMNS} FROM {self._jobs_table} WHERE {' AND '.join(where)}"
                " ORDER BY seq DESC LIMIT %(limit)s"
            )

        def page(conn: Connection) -> JobPage:
            rows = conn.execute(statement, params).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = tuple(pg_rows.row_to_job(row) for row in rows)
            return JobPage(jobs, str(rows[-1][-1]) if more else None)

        return await self._run(page)

    async def summarize(self, *, minutes: int = 60) -> QueueSummary:
        """Count jobs by status and type; see :class:`~trio_jobs.storage.JobBrowser`, the module."""
        minutes = check_minutes(minutes)
        now = utcnow()
        start = window_start(now, minutes)
        jobs = self._jobs_table
        # Literal statuses (not parameters): the planner then knows from its
        # statistics which status is rare and walks jobs_status_idx for it.
        samples = " UNION ALL ".join(
            f"(SELECT '{s.value}' AS status, type FROM {jobs} WHERE status = '{s.value}'"
            f" ORDER BY seq DESC LIMIT {SAMPLE + 1})"
            for s in JobStatus
        )
        counts_sql = f"SELECT status, type, count(*) FROM ({samples}) AS s GROUP BY status, type"
        stats_sql = """
            SELECT s.most_common_vals::text::text[], s.most_common_freqs, c.reltuples
            FROM pg_stats AS s, pg_class AS c
            WHERE s.schemaname = %(schema)s AND s.tablename = 'jobs' AND s.attname = 'status'
                AND c.oid = %(table)s::regclass
        """
        exact_sql = f"SELECT type, count(*) FROM {jobs} WHERE status = %s GROUP BY type"
        oldest_sql = (
            f"SELECT created_at FROM {jobs} WHERE status = 'pending' AND ready_at <= now()"
            " ORDER BY seq LIMIT 1"
        )
        ends_sql = f"""
            SELECT date_trunc('minute', completed_at),
                count(*) FILTER (WHERE status = 'completed'),
                count(*) FILTER (WHERE status IN ('failed', 'timeout'))
            FROM {jobs} WHERE status IN ('completed', 'failed', 'timeout')
                AND completed_at >= %s GROUP BY 1
        """

        def read(conn: Connection) -> QueueSummary:
            counts: dict[tuple[JobStatus, str], int] = {}
            sampled: dict[JobStatus, int] = {}
            for status, job_type, count in conn.execute(counts_sql).fetchall():
                key = (JobStatus(status), job_type)
                counts[key] = int(count)
                sampled[key[0]] = sampled.get(key[0], 0) + int(count)
            big = [s for s, n in sampled.items() if n > SAMPLE]
            estimated: set[JobStatus] = set()
            if big:
                totals = _planner_totals(
                    conn.execute(stats_sql, {"schema": self._schema, "table": jobs}).fetchone()
                )
                for status in big:
                    total = totals.get(status.value)
                    if total is None:  # never analysed: count it all, once
                        for job_type, count in conn.execute(exact_sql, (status.value,)):
                            counts[(status, job_type)] = int(count)
                        continue
                    estimated.add(status)
                    total = max(total, sampled[status])
                    for key in [k for k in counts if k[0] is status]:
                        counts[key] = round(counts[key] * total / sampled[status])
            row = conn.execute(oldest_sql).fetchone()
            oldest: datetime | None = None if row is None else _utc(row[0])
            ends = [
                (_utc(minute), completed, failed)
                for minute, completed, failed in conn.execute(ends_sql, (start,)).fetchall()
            ]
            return QueueSummary(
                counts, frozenset(estimated), oldest, minute_series(now, minutes, ends)
            )

        return await self._run(read)

    async def job_types(self) -> list[str]:
        """Return the job types that have jobs, sorted: one probe of the type index per type."""
        jobs = self._jobs_table
        statement = f"""
            WITH RECURSIVE types AS (
                (SELECT type FROM {jobs} WHERE status <> 'running' ORDER BY type LIMIT 1)
                UNION ALL
                SELECT (SELECT j.type FROM {jobs} AS j
                        WHERE j.status <> 'running' AND j.type > types.type
                        ORDER BY j.type LIMIT 1)
                FROM types WHERE types.type IS NOT NULL
            )
            SELECT type FROM types WHERE type IS NOT NULL
            -- The type index holds no running job (see migration 7): those, few,
            -- come from jobs_worker_idx.
            UNION SELECT type FROM {jobs} WHERE status = 'running'
            ORDER BY type
        """

        def read(conn: Connection) -> list[str]:
            return [row[0] for row in conn.execute(statement).fetchall()]

        return await self._run(read)

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
        where.append(f"status IN {_FINAL}")
        statement = f"DELETE FROM {self._jobs_table} WHERE {' AND '.join(where)}"

        def purge(conn: Connection) -> int:
            return conn.execute(statement, params).rowcount

        return await self._run(purge)


def _filters(
    status: JobStatus | None, job_type: str | None, tenant_id: str | None
) -> tuple[list[str], dict[str, Any]]:
    """The conditions (SQL) and parameters of a page's or a purge's filters."""
    where = ["true"]
    params: dict[str, Any] = {}
    if status is not None:
        # Written into the text, not passed: the plan then walks the index that
        # holds this status's rows (not the status indexes, for running jobs).
        where.append(f"status = '{status.value}'")
    for column, value in (("type", job_type), ("tenant_id", tenant_id)):
        if value is not None:
            where.append(f"{column} = %({column})s")
            params[column] = value
    return where, params


def _planner_totals(row: tuple[Any, ...] | None) -> dict[str, int]:
    """Rows per status the planner expects, from ``pg_stats`` and ``pg_class``."""
    if row is None:
        return {}
    values, freqs, reltuples = row
    if not values or freqs is None or reltuples is None or reltuples < 0:
        return {}
    return {value: round(freq * reltuples) for value, freq in zip(values, freqs, strict=False)}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)
