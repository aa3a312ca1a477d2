"""The record-keeping half of :class:`SQLiteStorage`: reads, overwrites and administration.

What a worker does with jobs (claims, fenced settles, leases) lives in
:mod:`._store`, its waiting and wake-ups in :mod:`._waits`; the queries here read
and keep the records: the seed's reads and overwrites, the statistics, and the
administration behind ``trio-jobs list``, ``retry`` and ``purge``.
:class:`RecordQueries` is a base of :class:`SQLiteStorage`, which provides the
reads, the group-committed writes and the local wake-ups.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any, Final, TypeVar

import trio

from ..._records import Job, JobStats, JobStatus
from .._base import key_held, stats_from_rows
from ._commit import Op
from ._schema import (
    ACTIVE_HOLDER,
    CLAIM_ORDER,
    COLUMN_NAMES,
    DUE,
    INSERT,
    SELECT,
    encode_record,
    job_from_row,
)

T = TypeVar("T")

_FINAL_STATUSES: Final = "('completed', 'failed', 'cancelled', 'timeout')"


class RecordQueries:
    """Reads, overwrites and administration of a SQLite job table (see the module)."""

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read (the store provides it)."""
        raise NotImplementedError

    async def _write(self, op: Op[T]) -> T:
        """Run ``op`` in a group-committed write transaction (the store provides it)."""
        raise NotImplementedError

    def _changed(self, job_id: str) -> None:
        """Wake this store's waiters on ``job_id`` (the store provides it)."""
        raise NotImplementedError

    def _work_at(self, when: float | None) -> None:
        """Wake this store's work waiters now or at ``when`` (the store provides it)."""
        raise NotImplementedError

    def _note_work(self) -> None:
        """In a write: wake other processes' waiting stores once it commits (the store)."""
        raise NotImplementedError

    async def update(self, job: Job[Any]) -> None:
        """Overwrite a job's record unconditionally, or insert it (administrative).

        Not fenced: a worker's claim on the job stays in place while the new record
        says RUNNING and is dropped otherwise. A record without ``run_at`` keeps the
        stored one.

        Raises:
            TypeError: The payload, metadata or result is not JSON-encodable.
        """
        values = encode_record(job)
        keep_claim = job.status is JobStatus.RUNNING
        assignments = ", ".join(
            "run_at = COALESCE(?, run_at)" if name == "run_at" else f"{name} = ?"
            for name in COLUMN_NAMES[1:]
        )

        def op(conn: sqlite3.Connection, now: float) -> None:
            cur = conn.execute(
                f"UPDATE jobs SET {assignments},"
                " worker_id = CASE WHEN ? THEN worker_id END,"
                " lease_expires_at = CASE WHEN ? THEN lease_expires_at END,"
                " cancel_requested = CASE WHEN ? THEN cancel_requested ELSE 0 END"
                " WHERE id = ?",
                (*values[1:], keep_claim, keep_claim, keep_claim, job.id),
            )
            if cur.rowcount == 0:
                run_at = now if values[10] is None else values[10]
                conn.execute(INSERT, (*values[:10], run_at, *values[11:]))
            self._note_work()

        await self._write(op)
        self._changed(job.id)
        self._work_at(None)

    async def get(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        rows = await self._read(f"{SELECT} WHERE id = ?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Return (without claiming) up to ``limit`` ready jobs in claim order."""
        if limit <= 0:
            await trio.lowlevel.checkpoint()
            return []
        rows = await self._read(
            f"{SELECT} INDEXED BY jobs_ready WHERE {DUE} {CLAIM_ORDER} LIMIT ?",
            (time.time(), limit),
        )
        return [job_from_row(row) for row in rows]

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Return jobs with ``status``, oldest first."""
        rows = await self._read(
            f"{SELECT} WHERE status = ? ORDER BY seq LIMIT ?",
            (JobStatus(status).value, sql_limit(limit)),
        )
        return [job_from_row(row) for row in rows]

    async def mark_running(self, job_id: str) -> bool:
        """Move one job from PENDING to RUNNING; True only for the caller that did it.

        The seed's claim, kept for compatibility: it counts an attempt and sets
        ``started_at`` but takes no lease, so a crash of the caller leaves the job
        RUNNING for good. Workers use :meth:`claim`.
        """

        def op(conn: sqlite3.Connection, now: float) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " worker_id = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND status = 'pending'",
                (now, job_id),
            )
            return cur.rowcount == 1

        done = await self._write(op)
        if done:
            self._changed(job_id)
        return done

    async def delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed."""

        def op(conn: sqlite3.Connection, now: float) -> bool:
            return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1

        done = await self._write(op)
        if done:
            self._changed(job_id)
        return done

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Count jobs by status (of ``job_types`` only, when given)."""
        where, params = type_filter(job_types)
        rows = await self._read(
            "SELECT status, COUNT(*), AVG(execution_time) FROM jobs"
            f" WHERE 1{where} GROUP BY status",
            params,
        )
        return stats_from_rows(rows)

    # -- administration ---------------------------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return jobs, newest first, filtered by status and type."""
        where = ""
        params: list[Any] = []
        if status is not None:
            where += " AND status = ?"
            params.append(JobStatus(status).value)
        if job_type is not None:
            where += " AND type = ?"
            params.append(job_type)
        rows = await self._read(
            f"{SELECT} WHERE 1{where} ORDER BY seq DESC LIMIT ?", (*params, sql_limit(limit))
        )
        return [job_from_row(row) for row in rows]

    async def waiting_by_type(self) -> dict[str, int]:
        """Count the PENDING and RETRYING jobs of each type (types with none are left out)."""
        rows = await self._read(
            "SELECT type, COUNT(*) FROM jobs WHERE status IN ('pending', 'retrying') GROUP BY type"
        )
        return {str(job_type): int(n) for job_type, n in rows}

    async def job_ids_starting_with(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Return up to ``limit`` job ids that start with ``prefix``, in order (a range seek)."""
        if not prefix:
            raise ValueError("prefix must not be empty")
        rows = await self._read(
            "SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, prefix_end(prefix), sql_limit(limit)),
        )
        return [str(row[0]) for row in rows]

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Count jobs that are PENDING, RETRYING or RUNNING."""
        where, params = type_filter(job_types)
        rows = await self._read(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'retrying', 'running'){where}",
            params,
        )
        return int(rows[0][0])

    async def requeue(self, job_id: str) -> bool:
        """Give a FAILED, TIMEOUT or CANCELLED job a fresh start: PENDING, attempts 0.

        Its result, progress and times of the last run are cleared; ``last_error``
        is kept for the record.

        Returns:
            True when requeued; False for an unknown job or one not in those statuses.

        Raises:
            ValueError: an active job holds the job's ``unique_key``; nothing changes.
        """

        def op(conn: sqlite3.Connection, now: float) -> bool:
            # Checked in the write transaction (writers are serialised): the key
            # cannot be taken between this read and the update.
            row = conn.execute("SELECT unique_key FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row[0] is not None:
                holder = conn.execute(ACTIVE_HOLDER, (row[0],)).fetchone()
                if holder is not None and holder[0] != job_id:
                    raise ValueError(key_held(job_id, row[0], holder[0]))
            done = (
                conn.execute(
                    "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?,"
                    " started_at = NULL, completed_at = NULL, result = NULL,"
                    " execution_time = NULL, progress = NULL, progress_message = NULL,"
                    " worker_id = NULL, lease_expires_at = NULL, cancel_requested = 0"
                    " WHERE id = ? AND status IN ('failed', 'timeout', 'cancelled')",
                    (now, job_id),
                ).rowcount
                == 1
            )
            if done:
                self._note_work()
            return done

        done = await self._write(op)
        if done:
            self._changed(job_id)
            self._work_at(None)
        return done

    async def purge(
        self, older_than: float, *, statuses: Collection[JobStatus] | None = None
    ) -> int:
        """Delete final jobs (of ``statuses``, default all) completed over ``older_than`` s ago.

        Returns:
            How many jobs were deleted.

        Raises:
            ValueError: ``older_than`` is negative.
        """
        if not older_than >= 0:
            raise ValueError(f"older_than must be >= 0, got {older_than!r}")

        if statuses is None:
            status_sql, chosen = _FINAL_STATUSES, tuple[str, ...]()
        else:
            chosen = tuple(JobStatus(x).value for x in statuses if JobStatus(x).is_final)
            status_sql = f"({', '.join('?' * len(chosen))})" if chosen else "(NULL)"

        def op(conn: sqlite3.Connection, now: float) -> int:
            return conn.execute(
                f"DELETE FROM jobs WHERE status IN {status_sql} AND completed_at < ?",
                (*chosen, now - older_than),
            ).rowcount

        return await self._write(op)


def type_filter(job_types: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """The ``AND type IN (...)`` clause and its parameters (nothing for every type)."""
    if job_types is None:
        return "", ()
    types = (job_types,) if isinstance(job_types, str) else tuple(dict.fromkeys(job_types))
    return f" AND type IN ({', '.join('?' * len(types))})", types


def prefix_end(prefix: str) -> str:
    """The least string after every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def sql_limit(limit: int | None) -> int:
    """A ``LIMIT`` for SQLite: -1 (no limit) for ``None``."""
    return -1 if limit is None else max(0, limit)
