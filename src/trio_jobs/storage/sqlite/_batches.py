"""Batches, unique keys, schedule ticks and retention of :class:`SQLiteStorage`.

The tables and indexes are those of migration 3 in :mod:`._schema`. Every write
here is one op of the group commit (one ``BEGIN IMMEDIATE`` transaction shared
with concurrent writes), inside a ``SAVEPOINT`` of its own, so that it is all or
nothing even when the transaction commits other writes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from ..._records import Job, JobStatus, Schedule
from .._codec import BatchCodec
from ._records import RecordQueries
from ._schema import ACTIVE_HOLDER as _ACTIVE_HOLDER
from ._schema import INSERT, INSERT_FROM_BATCH_ROW, PUT_BATCH_ROW, Run, encode_record, encode_runs

#: Seconds the retention lease row is held for one batch (renewed by the next).
RETENTION_LEASE: Final = 60.0


class _Savepoint:
    """``with _Savepoint(conn):`` — undo every statement of the block if it raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("SAVEPOINT trio_jobs_batch")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._conn.execute("ROLLBACK TO trio_jobs_batch")
        self._conn.execute("RELEASE trio_jobs_batch")


#: Runs shorter than this are inserted row by row with every column bound (writing
#: the batch row would cost more than it saves).
_SHORT_RUN: Final = 4


def _after_payload(row: tuple[Any, ...], run_at: float) -> tuple[Any, ...]:
    """A run's columns after ``payload`` (in ``COLUMN_NAMES`` order), with ``run_at``."""
    return (*row[3:10], run_at, *row[11:])


def _rows(runs: list[Run], run_at: float) -> Iterator[tuple[Any, ...]]:
    """Each job's columns in ``COLUMN_NAMES`` order, with ``run_at``."""
    for row, items in runs:
        shared = _after_payload(row, run_at)
        for job_id, payload in items:
            yield (job_id, row[1], payload, *shared)


def _insert_runs(conn: sqlite3.Connection, runs: list[Run], run_at: float) -> None:
    """Insert the jobs of encoded ``runs``, all with ``run_at``. Raises on a duplicate id."""
    for run in runs:
        row, items = run
        if len(items) < _SHORT_RUN:
            conn.executemany(INSERT, _rows([run], run_at))
        else:
            conn.execute("DELETE FROM temp.trio_jobs_batch_row")
            conn.execute(PUT_BATCH_ROW, (row[1], *_after_payload(row, run_at)))
            conn.executemany(INSERT_FROM_BATCH_ROW, items)


def _insert_jobs(
    conn: sqlite3.Connection, runs: list[Run], jobs: Sequence[Job[Any]], run_at: float
) -> list[str]:
    """Insert the jobs of encoded ``runs``; return each one's holder. Raises on a duplicate id."""
    if all(job.unique_key is None for job in jobs):
        try:
            _insert_runs(conn, runs, run_at)
        except sqlite3.IntegrityError:
            raise ValueError("a job with one of these ids exists already") from None
        return [job.id for job in jobs]
    holders: list[str] = []
    for job, values in zip(jobs, _rows(runs, run_at), strict=True):
        key = job.unique_key
        if key is not None:
            found = conn.execute(_ACTIVE_HOLDER, (key,)).fetchone()
            if found is not None:
                holders.append(found[0])
                continue
        try:
            conn.execute(INSERT, values)
        except sqlite3.IntegrityError:
            raise ValueError(f"a job with id {job.id!r} exists already") from None
        holders.append(job.id)
    return holders


class BatchQueries(RecordQueries):
    """``save_many``, schedules and ``purge_batch`` of a SQLite job table (see the module)."""

    async def save_many(self, jobs: Sequence[Job[Any]], *, delay: float = 0.0) -> list[str]:
        """Insert jobs in one transaction, all or none (see ``BatchStorage``).

        Unique keys are checked under the write lock (SQLite has one writer at a
        time), and the partial unique index ``jobs_unique_key`` stands behind it.

        Raises:
            TypeError: a payload or metadata is not JSON-encodable; nothing stored.
            ValueError: a duplicate id, or a negative ``delay``; nothing stored.
        """
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        codec = BatchCodec()
        runs = encode_runs(jobs, codec)

        def op(conn: sqlite3.Connection, now: float) -> list[str]:
            with _Savepoint(conn):
                holders = _insert_jobs(conn, runs, jobs, now + delay)
            self._note_work()
            return holders

        holders = await self._write(op)
        self._work_at(None if delay == 0 else time.time() + delay)
        return holders

    async def put_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule's definition, keeping its ``last_run_at``."""
        values = (
            schedule.key,
            schedule.job_type,
            schedule.cron,
            schedule.every,
            schedule.timezone,
        )

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "INSERT INTO schedules (key, job_type, cron, every, timezone)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET job_type = excluded.job_type,"
                " cron = excluded.cron, every = excluded.every, timezone = excluded.timezone",
                values,
            )

        await self._write(op)

    async def list_schedules(self) -> list[Schedule]:
        """Return the stored schedules by key (``next_run_at`` left to the caller)."""
        rows = await self._read(
            "SELECT key, job_type, cron, every, timezone, last_run_at FROM schedules ORDER BY key"
        )
        return [
            Schedule(
                key=key,
                job_type=job_type,
                cron=cron,
                every=every,
                timezone=timezone,
                next_run_at=None,
                last_run_at=None if last is None else datetime.fromtimestamp(last, UTC),
            )
            for key, job_type, cron, every, timezone, last in rows
        ]

    async def enqueue_tick(
        self, key: str, tick: datetime, job: Job[Any], *, delay: float = 0.0
    ) -> bool:
        """Record the tick and save ``job`` in one transaction (see ``ScheduleStorage``).

        False if a tick of ``key`` at or after ``tick`` was taken. The write lock
        orders the takers; the tick replaces the key's older one.
        """
        values = encode_record(job)
        when = tick.timestamp()

        def op(conn: sqlite3.Connection, now: float) -> bool:
            with _Savepoint(conn):
                newer = conn.execute(
                    "SELECT 1 FROM schedule_ticks WHERE key = ? AND scheduled_for >= ?",
                    (key, when),
                ).fetchone()
                if newer is not None:
                    return False
                conn.execute(
                    "DELETE FROM schedule_ticks WHERE key = ? AND scheduled_for < ?", (key, when)
                )
                conn.execute(
                    "INSERT INTO schedule_ticks (key, scheduled_for, job_id) VALUES (?, ?, ?)",
                    (key, when, job.id),
                )
                _insert_jobs(conn, [(values, [(values[0], values[2])])], [job], now + delay)
                conn.execute(
                    "UPDATE schedules SET last_run_at = ? WHERE key = ?"
                    " AND (last_run_at IS NULL OR last_run_at < ?)",
                    (when, key, when),
                )
            self._note_work()
            return True

        stored = await self._write(op)
        if stored:
            self._changed(job.id)
            self._work_at(None)
        return stored

    async def purge_batch(
        self, status: JobStatus, older_than: float, *, limit: int, holder: str
    ) -> int | None:
        """Delete up to ``limit`` old jobs of ``status``, oldest first, under the lease row.

        Returns:
            How many were deleted, or ``None`` when another holder has the lease.
        """

        def op(conn: sqlite3.Connection, now: float) -> int | None:
            held = conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ('retention', ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
                (holder, now + RETENTION_LEASE, now),
            ).rowcount
            if not held:
                return None
            return conn.execute(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_retention"
                " WHERE status = ? AND completed_at IS NOT NULL AND completed_at < ?"
                " ORDER BY completed_at LIMIT ?)",
                (JobStatus(status).value, now - older_than, limit),
            ).rowcount

        return await self._write(op)
