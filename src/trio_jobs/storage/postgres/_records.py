"""The record-keeping half of :class:`PostgresStorage`: reads, overwrites and administration.

What a worker does with jobs (claims, fenced settles, leases, wake-ups) lives in
:mod:`._store`; the queries here read and keep the records: the seed's reads and
overwrites, the statistics, and the administration behind ``trio-jobs list``,
``retry`` and ``purge``. :class:`RecordQueries` is a base of :class:`PostgresStorage`
and runs every statement through its ``_run``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..._records import Job, JobStats, JobStatus
from .._base import key_held, stats_from_rows
from . import _rows as pg_rows
from . import _sql as sql

if TYPE_CHECKING:
    from ._connect import Connection
    from ._listen import Wakeups

T = TypeVar("T")


class RecordQueries:
    """Reads, overwrites and administration of a PostgreSQL job table (see the module)."""

    _sql: sql.Statements
    _wakeups: Wakeups
    _work_channel: str
    _changed_channel: str

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a pooled connection in a worker thread (the store provides it)."""
        raise NotImplementedError

    async def update(self, job: Job[Any]) -> None:
        """Overwrite a job's record unconditionally, or insert it (administrative; not fenced).

        A job written with a non-running status loses any lease and cancellation
        request it had. Its ``run_at``, when set, also becomes the time from which
        it can be claimed.

        Raises:
            TypeError: a field is not JSON-encodable; nothing changed.

        """
        params = pg_rows.job_record(job)

        def update(conn: Connection) -> None:
            with conn.transaction():
                if conn.execute(self._sql.update, params).fetchone() is None:
                    conn.execute(self._sql.insert_as_is, params)
                conn.execute(
                    self._sql.notify, (self._changed_channel, pg_rows.id_payloads([job.id])[0])
                )
                if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
                    conn.execute(self._sql.notify, (self._work_channel, "0"))

        await self._run(update)
        self._wakeups.wake_change(job.id)
        if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
            self._wakeups.wake_work()

    async def get(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""

        def get(conn: Connection) -> Job[Any] | None:
            row = conn.execute(self._sql.get, (job_id,)).fetchone()
            return None if row is None else pg_rows.row_to_job(row)

        return await self._run(get)

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Return (without claiming) up to ``limit`` ready jobs in claim order."""
        limit = check_limit(limit)
        return await self._run(partial(self._fetch_jobs, self._sql.get_next_pending, (limit,)))

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Return jobs with ``status``, oldest first (at most ``limit``; ``None``: all)."""
        status = JobStatus(status)
        limit = None if limit is None else check_limit(limit)
        return await self._run(
            partial(self._fetch_jobs, self._sql.get_by_status[status.value], {"limit": limit})
        )

    def _fetch_jobs(self, statement: str, params: Any, conn: Connection) -> list[Job[Any]]:
        return [pg_rows.row_to_job(row) for row in conn.execute(statement, params).fetchall()]

    def _change_one(
        self, statement: str, job_id: str, conn: Connection, *, work: bool = False
    ) -> bool:
        """Run ``statement`` on ``job_id``'s row; announce it in the same transaction.

        ``work``: also announce new work. False when no row matched.
        """
        with conn.transaction():
            if conn.execute(statement, (job_id,)).fetchone() is None:
                return False
            conn.execute(
                self._sql.notify, (self._changed_channel, pg_rows.id_payloads([job_id])[0])
            )
            if work:
                conn.execute(self._sql.notify, (self._work_channel, "0"))
            return True

    async def mark_running(self, job_id: str) -> bool:
        """Move one job from PENDING to RUNNING (counting an attempt); True only for the mover.

        The seed's claim, kept for compatibility: it takes no lease, so a crash
        of the caller leaves the job RUNNING forever. Workers use :meth:`claim`.
        """

        def mark(conn: Connection) -> bool:
            return conn.execute(self._sql.mark_running, (job_id,)).fetchone() is not None

        moved = await self._run(mark)
        if moved:
            self._wakeups.wake_change(job_id)
        return moved

    async def delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed. Its worker learns at its next heartbeat."""
        deleted = await self._run(partial(self._change_one, self._sql.delete, job_id))
        if deleted:
            self._wakeups.wake_change(job_id)
        return deleted

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Count jobs by status (only of ``job_types`` when given)."""
        types = type_list(job_types)
        if types == []:
            await trio.lowlevel.checkpoint()
            return JobStats()

        def stats(conn: Connection) -> list[tuple[Any, ...]]:
            if types is None:
                return conn.execute(self._sql.stats).fetchall()
            return conn.execute(self._sql.stats_types, (types,)).fetchall()

        return stats_from_rows(await self._run(stats))

    # -- administration -----------------------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return jobs, newest first, filtered by status and type."""
        value = None if status is None else JobStatus(status).value
        params = {
            "type": job_type,
            "limit": None if limit is None else check_limit(limit),
        }
        statement = self._sql.list_jobs[value, job_type is not None]
        return await self._run(partial(self._fetch_jobs, statement, params))

    async def waiting_by_type(self) -> dict[str, int]:
        """Count the PENDING and RETRYING jobs of each type (types with none are left out)."""
        statement = self._sql.waiting_by_type

        def count(conn: Connection) -> dict[str, int]:
            return {str(t): int(n) for t, n in conn.execute(statement).fetchall()}

        return await self._run(count)

    async def job_ids_starting_with(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Return up to ``limit`` job ids that start with ``prefix``, in order."""
        if not prefix:
            raise ValueError("prefix must not be empty")
        statement = self._sql.ids_starting_with
        params = {"prefix": prefix, "limit": check_limit(limit)}

        def find(conn: Connection) -> list[str]:
            return [str(row[0]) for row in conn.execute(statement, params).fetchall()]

        return await self._run(find)

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Count jobs that are PENDING, RETRYING or RUNNING (only of ``job_types`` when given)."""
        types = type_list(job_types)
        if types == []:
            await trio.lowlevel.checkpoint()
            return 0

        def count(conn: Connection) -> int:
            if types is None:
                row = conn.execute(self._sql.count_unfinished).fetchone()
            else:
                row = conn.execute(self._sql.count_unfinished_types, {"types": types}).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(count)

    async def requeue(self, job_id: str) -> bool:
        """Give a FAILED, TIMEOUT or CANCELLED job a fresh start (PENDING, attempts 0).

        The result, progress and timestamps of its last run are cleared; its
        ``last_error`` and ``execution_time`` are kept, to say how it last went.
        It queues behind the jobs already waiting at its priority.

        Raises:
            ValueError: an active job holds the job's ``unique_key``; nothing changes.
        """
        statement = self._sql.requeue
        holder_sql = self._sql.unique_holder

        def requeue(conn: Connection) -> bool:
            import psycopg

            try:
                return self._change_one(statement, job_id, conn, work=True)
            except psycopg.errors.UniqueViolation as exc:
                # The partial unique index over active jobs: another job holds the
                # key now. (Its transaction rolled back: nothing changed.)
                if exc.diag.constraint_name != "jobs_unique_key_idx":
                    raise
                row = conn.execute(holder_sql, (job_id,)).fetchone()
                key, holder = (row[0], row[1]) if row is not None else ("?", None)
                raise ValueError(key_held(job_id, key, holder)) from None

        requeued = await self._run(requeue)
        if requeued:
            self._wakeups.wake_change(job_id)
            self._wakeups.wake_work()
        return requeued

    async def purge(
        self, older_than: float, *, statuses: Collection[JobStatus] | None = None
    ) -> int:
        """Delete final jobs (of ``statuses``, default all) completed over ``older_than`` s ago."""
        older_than = check_seconds(older_than, "older_than", allow_inf=True)
        if math.isinf(older_than):
            await trio.lowlevel.checkpoint()
            return 0

        chosen = (
            None
            if statuses is None
            else [JobStatus(x).value for x in statuses if JobStatus(x).is_final]
        )

        def purge(conn: Connection) -> int:
            return conn.execute(self._sql.purge, (older_than, chosen, chosen)).rowcount

        return await self._run(purge)


def type_list(job_types: Collection[str] | None) -> list[str] | None:
    """``job_types`` as a list for a statement (``None``: every type)."""
    if job_types is None:
        return None
    if isinstance(job_types, str):
        raise TypeError("job_types must be a collection of type names, not a str")
    return list(job_types)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not finite."""
    return None if value is None or not math.isfinite(value) else float(value)


def check_limit(limit: int) -> int:
    """Return ``limit`` if it is an int >= 0; raise TypeError or ValueError naming it."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    return limit


def check_seconds(value: float, name: str, *, allow_inf: bool = False) -> float:
    """Return ``value`` as seconds >= 0 (finite unless ``allow_inf``), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value >= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
