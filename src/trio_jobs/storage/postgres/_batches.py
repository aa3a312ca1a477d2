"""Batches, unique keys, schedule ticks and retention of :class:`PostgresStorage`.

The tables and indexes are those of migration 3 in :mod:`._sql`.

- ``save_many`` inserts a whole batch in **one statement** (column by column:
  see ``BatchInserts`` in :mod:`._sql`) with ``ON CONFLICT DO NOTHING``: a row
  whose ``unique_key`` an active job holds (the partial unique index
  ``jobs_unique_key_idx``) is skipped by the database itself, race-free across
  processes, and the holder's id is read in the same transaction.
- ``enqueue_tick`` inserts the ``(key, tick)`` row and the job in one transaction,
  under an advisory lock per key: a tick at or before the key's newest is refused,
  so exactly one runner wins each, and the key's older row is deleted.
- ``purge_batch`` deletes at most ``limit`` rows per statement, under a
  transaction-level advisory lock that no two runners hold at once. The victims
  come from ``jobs_retention_idx`` and are deleted by ctid; each batch of a pass
  starts where the previous one ended, so its cost does not grow with the rows
  deleted before it (``bench/retention.py``: 1,000,000 jobs, about 3,000 buffer
  accesses and a few ms per batch throughout).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import trio

from ..._records import Job, JobStatus, Schedule
from .._codec import BatchCodec
from . import _rows as pg_rows
from ._records import RecordQueries, check_seconds

if TYPE_CHECKING:
    from ._connect import Connection

#: The floor of a retention pass's first batch: every completed_at is after it.
_EARLIEST: Final = datetime(1, 1, 1, tzinfo=UTC)

#: How often ``save_many`` starts over when a key's holder finished meanwhile.
_TRIES: Final = 5


class _HolderGone(Exception):
    """The active job holding a key ended between the insert and the read: try again."""


def retention_key(schema: str) -> int:
    """The 64-bit advisory lock key that one retention batch of ``schema`` holds."""
    digest = hashlib.blake2b(f"trio_jobs.retention:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def tick_key(schema: str, key: str) -> int:
    """The 64-bit advisory lock key that the takers of schedule ``key``'s ticks queue on."""
    digest = hashlib.blake2b(f"trio_jobs.tick:{schema}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class BatchQueries(RecordQueries):
    """``save_many``, schedules and ``purge_batch`` of a PostgreSQL job table (see the module)."""

    _schema: str
    # Per status, the newest completed_at the current retention pass deleted: the
    # next batch's index scan starts there instead of walking the index entries
    # of the rows deleted before (dead until vacuumed). Forgotten when a pass ends.
    _purge_floors: dict[str, datetime]

    def _batch_sql(self, name: str) -> str:
        s = f'"{self._schema}"'
        active = "status IN ('pending', 'running', 'retrying')"
        statements = {
            "holders": f"SELECT unique_key, id FROM {s}.jobs"
            f" WHERE unique_key = ANY(%s) AND {active}",
            # Under the key's advisory lock (each statement sees what the previous
            # holder committed): taken unless a tick as new is there, and the
            # key's older tick goes.
            "tick_lock": "SELECT pg_advisory_xact_lock(%s)",
            "tick": f"INSERT INTO {s}.schedule_ticks (key, scheduled_for, job_id)"
            " SELECT %(key)s, %(tick)s, %(job)s WHERE NOT EXISTS (SELECT 1"
            f" FROM {s}.schedule_ticks WHERE key = %(key)s AND scheduled_for >= %(tick)s)",
            "tick_trim": f"DELETE FROM {s}.schedule_ticks"
            " WHERE key = %(key)s AND scheduled_for < %(tick)s",
            "last_run": f"UPDATE {s}.schedules SET last_run_at = %(tick)s WHERE key = %(key)s"
            " AND (last_run_at IS NULL OR last_run_at < %(tick)s)",
            "put_schedule": f"INSERT INTO {s}.schedules (key, job_type, cron, every, timezone)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
            " job_type = excluded.job_type, cron = excluded.cron, every = excluded.every,"
            " timezone = excluded.timezone",
            "schedules": "SELECT key, job_type, cron, every, timezone, last_run_at"
            f" FROM {s}.schedules ORDER BY key",
            # One statement, one transaction: the lock is taken first (a
            # MATERIALIZED CTE), and without it nothing is selected. The victims
            # come from jobs_retention_idx under the LIMIT; the delete finds them by
            # ctid (a TID scan: with `id IN (...)` the planner may hash-join
            # against a scan of the whole table). A row changed meanwhile (a
            # retried job) has a new ctid or fails the repeated conditions, and
            # stays.
            "purge": f"""
                WITH lock AS MATERIALIZED (
                    SELECT pg_try_advisory_xact_lock(%(lock)s) AS held
                ), victims AS MATERIALIZED (
                    SELECT ctid FROM {s}.jobs
                    WHERE status = %(status)s AND completed_at >= %(floor)s
                      AND completed_at < now() - %(age)s * interval '1 second'
                      AND (SELECT held FROM lock)
                    ORDER BY completed_at
                    LIMIT %(limit)s
                ), deleted AS (
                    DELETE FROM {s}.jobs
                    WHERE ctid = ANY(ARRAY(SELECT ctid FROM victims))
                      AND status = %(status)s
                      AND completed_at < now() - %(age)s * interval '1 second'
                    RETURNING completed_at
                )
                SELECT (SELECT held FROM lock), count(*), max(completed_at) FROM deleted
            """,
        }
        return statements[name]

    async def save_many(self, jobs: Sequence[Job[Any]], *, delay: float = 0.0) -> list[str]:
        """Insert jobs in one statement and one transaction, all or none.

        See ``BatchStorage``.

        Raises:
            TypeError: a payload or metadata is not JSON-encodable; nothing stored.
            ValueError: a duplicate id, or a negative ``delay``; nothing stored.
        """
        delay = check_seconds(delay, "delay")
        if not jobs:
            await trio.lowlevel.checkpoint()
            return []
        arrays, params = pg_rows.job_columns(jobs, BatchCodec(), delay)
        params["token"] = uuid.uuid4().hex
        insert = self._sql.inserts.statement(arrays, conflict="")
        holders_sql = self._batch_sql("holders")

        def write(conn: Connection) -> list[str]:
            for _ in range(_TRIES):
                try:
                    with conn.transaction():
                        rows = conn.execute(insert, params).fetchall()
                        holders = _holders(conn, holders_sql, jobs, {row[0] for row in rows})
                except _HolderGone:
                    continue
                conn.execute(self._sql.notify, (self._work_channel, repr(delay)))
                return holders
            raise RuntimeError("unique keys kept changing hands; save_many gave up")

        holders = await self._run(write)
        self._wakeups.schedule_work(delay)
        return holders

    async def put_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule's definition, keeping its ``last_run_at``."""
        params = (
            schedule.key,
            schedule.job_type,
            schedule.cron,
            schedule.every,
            schedule.timezone,
        )
        statement = self._batch_sql("put_schedule")

        def put(conn: Connection) -> None:
            conn.execute(statement, params)

        await self._run(put)

    async def list_schedules(self) -> list[Schedule]:
        """Return the stored schedules by key (``next_run_at`` left to the caller)."""
        statement = self._batch_sql("schedules")

        def read(conn: Connection) -> list[tuple[Any, ...]]:
            return conn.execute(statement).fetchall()

        return [
            Schedule(
                key=key,
                job_type=job_type,
                cron=cron,
                every=every,
                timezone=timezone,
                next_run_at=None,
                last_run_at=None if last is None else last.astimezone(UTC),
            )
            for key, job_type, cron, every, timezone, last in await self._run(read)
        ]

    async def enqueue_tick(
        self, key: str, tick: datetime, job: Job[Any], *, delay: float = 0.0
    ) -> bool:
        """Record the tick and save ``job`` in one transaction (see ``ScheduleStorage``).

        False if a tick of ``key`` at or after ``tick`` was taken. The takers of a
        key queue on its advisory lock; the tick replaces the key's older one.
        """
        arrays, params = pg_rows.job_columns([job], BatchCodec(), check_seconds(delay, "delay"))
        params["token"] = uuid.uuid4().hex
        tick_sql, insert, last_run = (
            self._batch_sql("tick"),
            self._sql.inserts.statement(arrays),
            self._batch_sql("last_run"),
        )

        lock, trim = self._batch_sql("tick_lock"), self._batch_sql("tick_trim")
        mark = {"key": key, "tick": tick, "job": job.id}

        def write(conn: Connection) -> bool:
            with conn.transaction():
                conn.execute(lock, (tick_key(self._schema, key),))
                if not conn.execute(tick_sql, mark).rowcount:
                    return False
                conn.execute(trim, mark)
                conn.execute(insert, params)
                conn.execute(last_run, {"tick": tick, "key": key})
            conn.execute(self._sql.notify, (self._work_channel, "0"))
            return True

        stored = await self._run(write)
        if stored:
            self._wakeups.wake_work()
        return stored

    async def purge_batch(
        self, status: JobStatus, older_than: float, *, limit: int, holder: str
    ) -> int | None:
        """Delete up to ``limit`` old jobs of ``status``, oldest first, under an advisory lock.

        Returns:
            How many were deleted, or ``None`` when another runner's batch holds the lock.
        """
        value = JobStatus(status).value
        params = {
            "lock": retention_key(self._schema),
            "status": value,
            "age": older_than,
            "limit": limit,
            "floor": self._purge_floors.get(value, _EARLIEST),
        }
        statement = self._batch_sql("purge")

        def purge(conn: Connection) -> tuple[bool, int, datetime | None]:
            row = conn.execute(statement, params).fetchone()
            assert row is not None
            return bool(row[0]), int(row[1]), row[2]

        held, deleted, newest = await self._run(purge)
        if not held:
            return None
        if deleted < limit or newest is None:
            self._purge_floors.pop(value, None)  # the pass is over: next one from the start
        else:
            self._purge_floors[value] = newest
        return deleted


def _holders(
    conn: Connection, statement: str, jobs: Sequence[Job[Any]], inserted: set[str]
) -> list[str]:
    """Each job's holder: itself if inserted, else the active job with its key."""
    keys = [job.unique_key for job in jobs if job.id not in inserted]
    if not keys:
        return [job.id for job in jobs]
    if any(key is None for key in keys):
        missing = next(job.id for job in jobs if job.id not in inserted and job.unique_key is None)
        raise ValueError(f"a job with id {missing!r} exists already")
    found: dict[str, str] = dict(conn.execute(statement, (list(set(keys)),)).fetchall())
    holders = []
    for job in jobs:
        if job.id in inserted:
            holders.append(job.id)
        elif job.unique_key in found:
            holders.append(found[job.unique_key])
        else:
            raise _HolderGone
    return holders
