"""The workers table of :class:`SQLiteStorage`: one row per live runner, and what it covers.

A runner registered with :meth:`~WorkerQueries.register_worker` has a row (id,
hostname, pid, start, last heartbeat, expiry, concurrency, running, job types).
Its claims through that store object carry no lease of their own
(``lease_expires_at`` NULL): the row stands for them all, so its heartbeat writes
one row however many jobs it runs, and a rescue reads only what is lost. (A claim
with a lease of its own is always safe: a heartbeat under a row moves it there.)

The indexes (migration 2 in :mod:`._schema`) keep the two kinds of claim apart:

- ``workers_expiry`` (``expires_at``): the stale rows, found by one seek;
- ``jobs_claims`` (``worker_id``, running claims *without* a lease of their own):
  a worker's row-covered claims, for its heartbeat, its unregistering, and the
  rescue of a stale worker's jobs;
- ``jobs_leases`` (``lease_expires_at``, running claims *with* a lease of their
  own: workers without a row): the expired ones, found by one range seek.

So a rescue costs the stale workers' claims and the expired leases, and nothing
for the jobs live workers run: neither index it reads holds those.

Invariant: a row never expires before any lease the runner believes its attempts
hold. The runner takes a claim's lease as "sent + ``lease_duration``", and a
renewal's as "heartbeat sent + ``lease_duration``"; the store's ``now`` in the
claim or heartbeat transaction is later than "sent", and both push the row's
expiry to at least ``now + lease_duration``. A claim by a worker whose row has
already expired (a rescuer may be about to drop it) takes a lease of its own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from ..._records import WorkerInfo
from ._commit import Op
from ._schema import WORKER_COLUMNS, encode_worker, worker_from_row

T = TypeVar("T")

#: A registered worker's live row, pushed to expire no sooner than the first
#: parameter; a row that expired already (the third) is left to the rescuers.
#: Returns a row when the worker has a live row.
EXTEND_ROW: Final = (
    "UPDATE workers SET expires_at = MAX(expires_at, ?) WHERE worker_id = ? AND expires_at > ?"
    " RETURNING 1"
)
#: A worker's claims that its row stands for (no lease of their own).
ROW_CLAIMS: Final = (
    "FROM jobs INDEXED BY jobs_claims"
    " WHERE worker_id = ? AND status = 'running' AND lease_expires_at IS NULL"
)
#: Is there anything to rescue? Two index seeks, no write lock.
ANY_EXPIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM workers INDEXED BY workers_expiry WHERE expires_at < ?)"
    " OR EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_leases"
    " WHERE status = 'running' AND lease_expires_at < ?)"
)


class WorkerQueries:
    """Registering, unregistering and listing workers (a base of :class:`SQLiteStorage`)."""

    _lease: float
    #: The workers registered through this store object: a heartbeat puts a row a
    #: rescuer dropped back from here.
    _workers: dict[str, WorkerInfo]

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read (the store provides it)."""
        raise NotImplementedError

    async def _write(self, op: Op[T]) -> T:
        """Run ``op`` in a group-committed write transaction (the store provides it)."""
        raise NotImplementedError

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the row of ``info.worker_id``; its lease starts now.

        ``last_seen`` becomes now (the store's clock) and the row expires
        :attr:`lease_duration` from now unless a heartbeat renews it. From then on
        this worker's claims carry no lease of their own.

        Raises:
            TypeError: ``info.job_types`` holds something that is not a string.
        """
        values = encode_worker(info)
        lease = self._lease

        def op(conn: sqlite3.Connection, now: float) -> None:
            insert_row(conn, values, now, now + lease)

        await self._write(op)
        self._workers[info.worker_id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row (its runner stopped cleanly). Idempotent.

        Claims the row still covered (attempts still running) get a lease of their
        own of :attr:`lease_duration`: renewed per job if the worker heartbeats
        them, rescued otherwise.
        """
        self._workers.pop(worker_id, None)
        lease = self._lease

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
            conn.execute(
                "UPDATE jobs INDEXED BY jobs_claims SET lease_expires_at = ?"
                " WHERE worker_id = ? AND status = 'running' AND lease_expires_at IS NULL",
                (now + lease, worker_id),
            )

        await self._write(op)

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers (whose row has not expired), oldest start first."""
        rows = await self._read(
            f"SELECT {WORKER_COLUMNS} FROM workers WHERE expires_at > ?"
            " ORDER BY started_at, worker_id",
            (time.time(),),
        )
        return [worker_from_row(row) for row in rows]

    async def _has_row(self, worker_id: str) -> bool:
        rows = await self._read("SELECT 1 FROM workers WHERE worker_id = ?", (worker_id,))
        return bool(rows)


def renew_row(
    conn: sqlite3.Connection,
    worker_id: str,
    info: WorkerInfo | None,
    running: int,
    now: float,
    expiry: float,
) -> bool:
    """Renew the worker's row for a heartbeat (putting it back from ``info`` if dropped).

    Returns:
        Whether the worker has a row now.
    """
    if conn.execute(
        "UPDATE workers SET last_seen = ?, running = ?, expires_at = MAX(expires_at, ?)"
        " WHERE worker_id = ? RETURNING 1",
        (now, running, expiry, worker_id),
    ).fetchall():
        return True
    if info is None:
        return False
    values = encode_worker(info)
    insert_row(conn, (*values[:5], running, values[6]), now, expiry)
    return True


def insert_row(
    conn: sqlite3.Connection, values: tuple[Any, ...], now: float, expiry: float
) -> None:
    """Insert or replace a worker's row from :func:`encode_worker` values."""
    worker_id, hostname, pid, started_at, concurrency, running, job_types = values
    conn.execute(
        "INSERT INTO workers (worker_id, hostname, pid, started_at, last_seen, expires_at,"
        " concurrency, running, job_types) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (worker_id) DO UPDATE SET hostname = excluded.hostname,"
        " pid = excluded.pid, started_at = excluded.started_at,"
        " last_seen = excluded.last_seen, expires_at = excluded.expires_at,"
        " concurrency = excluded.concurrency, running = excluded.running,"
        " job_types = excluded.job_types",
        (worker_id, hostname, pid, started_at, now, expiry, concurrency, running, job_types),
    )


def lost_claims(conn: sqlite3.Connection, now: float) -> list[tuple[Any, ...]]:
    """Select the claims lost by ``now`` and drop the stale workers' rows (in a write).

    Returns:
        ``(seq, worker_id, attempts, max_attempts, cancel_requested, why)`` per
        lost claim, ``why`` saying how the loss was noticed.
    """
    lost: list[tuple[Any, ...]] = []
    stale = conn.execute(
        "SELECT worker_id FROM workers INDEXED BY workers_expiry WHERE expires_at < ?", (now,)
    ).fetchall()
    for (worker_id,) in stale:
        lost += [
            (*row, "its heartbeat stopped")
            for row in conn.execute(
                f"SELECT seq, worker_id, attempts, max_attempts, cancel_requested {ROW_CLAIMS}",
                (worker_id,),
            ).fetchall()
        ]
        conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
    lost += [
        (*row, "lease expired")
        for row in conn.execute(
            "SELECT seq, worker_id, attempts, max_attempts, cancel_requested"
            " FROM jobs INDEXED BY jobs_leases WHERE status = 'running' AND lease_expires_at < ?",
            (now,),
        ).fetchall()
    ]
    return lost
