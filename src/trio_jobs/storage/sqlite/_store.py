"""SQLiteStorage: a durable job store in one SQLite file, shared by the processes of one machine.

How it talks to SQLite: one stdlib :mod:`sqlite3` connection per store object, used
from worker threads (``trio.to_thread``) by one thread at a time (a
:class:`trio.Lock`). The file is in WAL mode, so readers never block the writer,
with ``synchronous=NORMAL`` (a commit is durable against a process crash; a power
cut may lose the last commits, never corrupt the file) and a busy timeout, so
writers of several processes queue for the write lock instead of failing.

Every write is a ``BEGIN IMMEDIATE`` transaction, so a claim selects and marks its
jobs under the write lock and two claimers (threads or processes) can never take the
same job. Writes from many tasks are *group-committed*: concurrent ``claim``,
``settle``, ``save`` and other writes queue up, and whichever caller finds no flush
in progress runs the whole queue in one thread call and one transaction, each
caller getting its own result. As with :func:`trio.to_thread.run_sync`, a write can
be cancelled until its transaction starts, and from then on its caller waits for
the result: a claim's jobs always reach the claimer (a claimed job nobody knows
about would only come back after its lease expired).

Times in the database are wall-clock unix seconds (``REAL``); ``run_at`` is always
set (a job saved without delay is eligible from its save time), so the claim order
"priority, then ``run_at``, then insertion order" is one index, and a claim seeks
each priority's due range in it (``priority IN (...) AND run_at <= now``): jobs
waiting out a delay or a backoff sit after the due ones of their priority and are
never read by a claim, however many there are.

Idle costs nothing but the poll: a worker waiting for work sleeps on a Unix
datagram socket beside the database (:mod:`._wake`) that every store whose commit
makes work claimable writes to, and polls only every ``poll_interval`` (the
runner's) as a backstop. A claim after a quiet spell first *reads* whether
anything is due (no write lock); only then does it take the write lock. A rescue
does the same.

Lost workers: a runner registered with :meth:`SQLiteStorage.register_worker` has a
row in the ``workers`` table, renewed by its heartbeat; its claims carry no lease of
their own (``lease_expires_at`` NULL), the row stands for them all, so a heartbeat
writes one row however many jobs the worker runs. A rescue reads the stale rows
(index on their expiry), then only those workers' claims (index on ``worker_id``
of row-covered claims), and the claims with a lease of their own that expired
(index on the lease of such claims only): what live workers run is never read.
A worker without a row (not registered, or its row went stale and was dropped)
keeps a lease per job, renewed per job by its heartbeat, as before.

This module holds the store's worker-side methods; :mod:`._connect` opens the file
and names its errors; :mod:`._records` holds the reads, overwrites and
administration (a base class), :mod:`._waits` the waiting (``wait_for_work`` and
the like) and the local wake-ups (a base class), :mod:`._schema` the migrations,
column lists and rows <-> jobs, :mod:`._commit` the group commit and :mod:`._wake`
the wake-ups between processes.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import trio

from ..._records import ErrorInfo, Job, JobStatus, WorkerInfo
from .._base import CancelOutcome, Heartbeat
from .._codec import decode_json, encode_error, encode_json
from ._batches import BatchQueries
from ._browse import BrowseQueries
from ._commit import GroupCommit, Op, Probe
from ._connect import connect, translate_error
from ._flow import FlowQueries, plan_claim, read_flow
from ._records import type_filter
from ._schema import (
    CLAIM_ORDER,
    COLUMNS,
    DUE,
    INSERT,
    READY,
    encode_record,
    job_from_row,
    next_due,
    next_due_sql,
)
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._waits import Waiting, wake_all
from ._wake import CANCEL, WORK, WakeChannel, wake_directory
from ._workers import ANY_EXPIRED, EXTEND_ROW, ROW_CLAIMS, WorkerQueries, lost_claims, renew_row

T = TypeVar("T")

_FENCE: Final = "id = ? AND status = 'running' AND attempts = ? AND worker_id = ?"


class SQLiteStorage(Waiting, BatchQueries, WorkerQueries, BrowseQueries, FlowQueries):
    """A durable job store in one SQLite file: jobs survive restarts and crashes.

    Several processes on one machine may share the file: each claims jobs
    atomically, holds them under a lease renewed by :meth:`heartbeat`, and a job
    whose worker died comes back through :meth:`rescue_expired`. Payloads, results
    and metadata are stored as JSON. The tables are created (and migrated, never
    destructively) by :meth:`open`; use the store as ``async with SQLiteStorage(p)
    as store:``, or hand it to a runner, which opens and closes it.

    It is a :class:`~trio_jobs.WorkerRegistry` too: a runner that registers
    has one row in the ``workers`` table, renewed by one cheap heartbeat, instead
    of a lease per job. Stores waiting for work wake each other through Unix
    datagram sockets in the directory ``<path>-wake`` beside the file, and poll
    only as a backstop (see :doc:`/explanation/sqlite`).

    ``run_at`` on the records it returns is always set: the wall-clock time from
    which the job is (or was) eligible to run, its save time when it had no delay.

    Args:
        path: The database file; created when missing (its directory must exist).
            ``":memory:"`` gives a private in-memory database (tests).
        lease_duration: Seconds a claim (or a worker's row) stays valid without a
            heartbeat.
        read_only: Open the file read-only (SQLite's ``mode=ro``): :meth:`open`
            creates, switches and migrates nothing, and refuses a missing file, one
            without trio_jobs tables, or one whose schema is older (not migrated
            yet) with :class:`~trio_jobs.StorageCorruptError`;
            every write raises :class:`~trio_jobs.StorageUnavailableError`. For
            tools that only look (``trio-jobs list``).

    Raises:
        TypeError: ``path`` is not a ``str`` or ``os.PathLike[str]``, or
            ``lease_duration`` is not a number.
        ValueError: ``lease_duration`` is not positive and finite.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease_duration: float = 30.0,
        read_only: bool = False,
    ) -> None:
        fspath = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if not isinstance(fspath, str):
            raise TypeError(f"path must be a str or os.PathLike[str], got {path!r}")
        if isinstance(lease_duration, bool) or not isinstance(lease_duration, int | float):
            raise TypeError(f"lease_duration must be a number, got {lease_duration!r}")
        if not 0 < lease_duration < math.inf:
            raise ValueError(f"lease_duration must be positive and finite, got {lease_duration!r}")
        self._path = fspath
        self._lease = float(lease_duration)
        self._read_only = bool(read_only)
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # The connection is used by one thread at a time: whoever holds the lock.
        self._lock = trio.Lock()
        self._thread_limiter = trio.CapacityLimiter(1)
        # Wake-ups between processes (None: an in-memory database, nobody to wake).
        directory = wake_directory(fspath)
        self._wake = WakeChannel(directory) if directory is not None else None
        # Group commit: writes wait in its queue; one flusher at a time runs it all.
        self._commit = GroupCommit(
            lock=self._lock,
            limiter=self._thread_limiter,
            connection=self._require,
            translate=partial(translate_error, self._path),
            after_commit=self._wake.flush if self._wake is not None else None,
        )
        # Local wake-ups for wait_for_work / wait_for_cancel_request: the cancel
        # scopes of the tasks waiting, cancelled to wake them.
        self._work_waiters: set[trio.CancelScope] = set()
        self._cancel_waiters: set[trio.CancelScope] = set()
        self._work_flag = False
        self._due: list[float] = []
        self._changes: dict[str, trio.Event] = {}
        #: Kinds of wake-up socket some task is reading now (one reader per socket).
        self._reading: set[str] = set()
        #: Kinds whose socket could not be made here: this store only polls for them.
        self._unreachable: set[str] = set()
        #: The work socket was bound after the last claim began: wait_for_work must
        #: let the caller look again (a commit before the bind woke nobody).
        self._fresh_listener = False
        #: Whether the last claim came back short: the next one reads before it writes.
        self._dry = True
        #: When the next delayed job (of the types last claimed) becomes due, as the
        #: last short claim or probe saw it (wall clock); None: none is delayed.
        self._next_due: float | None = None
        #: The workers registered through this store object (their rows are put
        #: back by a heartbeat after a rescuer dropped them).
        self._workers: dict[str, WorkerInfo] = {}

    def __repr__(self) -> str:
        ro = ", read_only=True" if self._read_only else ""
        return f"SQLiteStorage({self._path!r}, lease_duration={self._lease!r}{ro})"

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def read_only(self) -> bool:
        """Whether the store opens the file read-only (see the constructor)."""
        return self._read_only

    @property
    def lease_duration(self) -> float:
        """Seconds a claim (or a worker's row) stays valid without a heartbeat."""
        return self._lease

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, switch to WAL, and create or migrate the tables. Idempotent.

        Raises:
            FileNotFoundError: The file's directory does not exist.
            StorageUnavailableError: The file cannot be opened or written
                (permissions, not a file; also an :class:`OSError`), or another
                connection held it locked for longer than the busy timeout (then
                also a :class:`TimeoutError`).
            StorageCorruptError: The file is not a SQLite database, is corrupt, or
                holds a schema this version does not know (another program's, or a
                newer trio_jobs's); also a :class:`ValueError`. Read-only: the file
                is missing or has no trio_jobs tables.
        """
        async with self._lock:
            if self._conn is None:
                self._conn = await self._in_thread(
                    partial(connect, self._path, read_only=self._read_only)
                )
                self._closed = False
                self._unreachable.clear()

    async def close(self) -> None:
        """Close the connection and the wake-up sockets. Idempotent; the store may reopen."""
        # Shielded: a cancelled close must still release the connection, and the
        # only wait is for a short query in flight.
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                self._closed = True
                self._close_listeners()
                if self._wake is not None:
                    self._wake.close_sender()
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close, limiter=self._thread_limiter)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the seed's methods ---------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Insert a new job, claimable ``delay`` seconds from now.

        Concurrent saves are committed together in one transaction, and the stores
        of other processes waiting for work are woken.

        Raises:
            TypeError: The payload, metadata or result is not JSON-encodable (the
                message names the field); nothing is stored.
            ValueError: A job with this id exists already, or ``delay`` is negative.
        """
        _check_delay(delay)
        values = encode_record(job)

        def op(conn: sqlite3.Connection, now: float) -> float:
            run_at = now + delay
            try:
                conn.execute(INSERT, (*values[:10], run_at, *values[11:]))
            except sqlite3.IntegrityError as exc:
                if "unique_key" in str(exc):
                    raise ValueError(
                        f"an active job holds the unique_key {job.unique_key!r}"
                    ) from None
                raise ValueError(f"a job with id {job.id!r} exists already") from None
            self._note_work()
            return run_at

        run_at = await self._write(op)
        self._changed(job.id)
        self._work_at(run_at if delay > 0 else None)

    # -- claims, leases, fenced writes ------------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Atomically claim up to ``limit`` ready jobs for ``worker_id``.

        One ``BEGIN IMMEDIATE`` transaction selects the best ready jobs (priority,
        then ``run_at``, then insertion order) and marks them RUNNING with
        ``attempts + 1`` and ``started_at``. The claims of a worker registered
        through this store object (see :meth:`register_worker`) whose row is live
        are covered by that row, whose expiry the claim pushes to
        :attr:`lease_duration` from now; other claims get a lease of
        :attr:`lease_duration` of their own.

        The claim seeks each priority's due jobs in the claim-order index and
        stops at the first one not yet due: delayed and backing-off jobs are never
        walked past. After a claim that came back short (the queue ran dry), the
        next one first reads whether any job is due, and takes the write lock only
        if one is: an idle worker woken by unrelated commits writes nothing.

        Returns:
            The claimed jobs' snapshots, in claim order.
        """
        where, types = type_filter(job_types)
        if limit <= 0 or (job_types is not None and not types):
            await trio.lowlevel.checkpoint()
            return []
        self._fresh_listener = False
        lease = self._lease
        due_sql, next_sql = _probe_sql(where)
        # Only a worker registered through this store object may be covered by its
        # row (a lease of its own is always safe: the heartbeat of a worker with a
        # row moves the claim under it).
        registered = worker_id in self._workers
        flow_types = None if job_types is None else types

        def claim(conn: sqlite3.Connection, now: float) -> list[Any]:
            covered = (
                registered and conn.execute(EXTEND_ROW, (now + lease, worker_id, now)).fetchall()
            )
            flow = read_flow(conn, flow_types)
            if flow:
                # Some types have limits: choose under them (see ._flow).
                seqs = plan_claim(conn, now, limit, flow_types, flow)
                if not seqs:
                    return []
                return conn.execute(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1,"
                    " started_at = ?, completed_at = NULL, worker_id = ?, lease_expires_at = ?"
                    f" WHERE seq IN ({', '.join('?' * len(seqs))}) RETURNING {COLUMNS}, seq",
                    (now, worker_id, None if covered else now + lease, *seqs),
                ).fetchall()
            rows = conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " completed_at = NULL, worker_id = ?, lease_expires_at = ?"
                f" WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_ready WHERE {DUE}{where}"
                f" {CLAIM_ORDER} LIMIT ?) RETURNING {COLUMNS}, seq",
                (now, worker_id, None if covered else now + lease, now, *types, limit),
            ).fetchall()
            if len(rows) < limit:
                self._next_due = next_due(conn, next_sql, now, types)
            return rows

        def probe(conn: sqlite3.Connection, now: float) -> bool:
            if conn.execute(due_sql, (now, *types)).fetchone() is not None:
                return True
            self._next_due = next_due(conn, next_sql, now, types)
            return False

        rows: list[Any] = await self._write(claim, probe if self._dry else None, [])
        self._dry = len(rows) < limit
        # RETURNING yields rows in no particular order.
        rows.sort(key=lambda row: (-row[4], row[10], row[20]))
        jobs = [job_from_row(row) for row in rows]
        for job in jobs:
            self._changed(job.id)
        return jobs

    async def settle(
        self,
        job_id: str,
        *,
        worker_id: str,
        attempt: int,
        status: JobStatus,
        result: Any = None,
        error: ErrorInfo | None = None,
        delay: float = 0.0,
        execution_time: float | None = None,
    ) -> bool:
        """End an attempt, fenced: applies only while the claim is still this worker's.

        See :meth:`JobStorage.settle` for what each ``status`` does. Concurrent
        settles are committed together in one transaction.

        Returns:
            True when applied; False when the claim was no longer held.

        Raises:
            TypeError: ``result`` is not JSON-encodable; nothing changed.
            ValueError: ``status`` is RUNNING, or ``delay`` is negative.
        """
        status = JobStatus(status)
        _check_delay(delay)
        fence = (job_id, attempt, worker_id)
        error_json = encode_error(error)
        if status is JobStatus.COMPLETED:
            sql = (
                "UPDATE jobs SET status = 'completed', result = ?, completed_at = ?,"
                " execution_time = COALESCE(?, execution_time),"
                f" worker_id = NULL, lease_expires_at = NULL WHERE {_FENCE} RETURNING status"
            )
            result_json = encode_json(result, "result")

            def values(now: float) -> tuple[Any, ...]:
                return (result_json, now, execution_time, *fence)

        elif status.is_final:
            sql = (
                "UPDATE jobs SET status = ?, last_error = COALESCE(?, last_error),"
                " completed_at = ?, execution_time = COALESCE(?, execution_time),"
                f" worker_id = NULL, lease_expires_at = NULL WHERE {_FENCE} RETURNING status"
            )

            def values(now: float) -> tuple[Any, ...]:
                return (status.value, error_json, now, execution_time, *fence)

        elif status in (JobStatus.RETRYING, JobStatus.PENDING):
            # A cancellation requested during the attempt wins over another attempt
            # (and the interrupted attempt then stays counted).
            sql = (
                "UPDATE jobs SET"
                " status = CASE WHEN cancel_requested THEN 'cancelled' ELSE ? END,"
                " completed_at = CASE WHEN cancel_requested THEN ? END,"
                " run_at = ?, attempts = attempts - CASE WHEN cancel_requested THEN 0 ELSE ? END,"
                " last_error = COALESCE(?, last_error),"
                " execution_time = COALESCE(?, execution_time),"
                # The next attempt starts from nothing: no stale progress meanwhile.
                " progress = CASE WHEN cancel_requested THEN progress END,"
                " progress_message = CASE WHEN cancel_requested THEN progress_message END,"
                f" worker_id = NULL, lease_expires_at = NULL WHERE {_FENCE} RETURNING status"
            )
            uncount = 1 if status is JobStatus.PENDING else 0
            wait = delay if status is JobStatus.RETRYING else 0.0

            def values(now: float) -> tuple[Any, ...]:
                return (status.value, now, now + wait, uncount, error_json, execution_time, *fence)

        else:
            raise ValueError(f"cannot settle an attempt as {status.value!r}")

        def op(conn: sqlite3.Connection, now: float) -> tuple[str | None, float]:
            row = conn.execute(sql, values(now)).fetchone()
            if row is not None and row[0] in ("retrying", "pending"):
                self._note_work()
            return (None if row is None else row[0]), now

        new_status, now = await self._write(op)
        if new_status is None:
            return False
        self._changed(job_id)
        if new_status == "retrying":
            self._work_at(now + delay if delay > 0 else None)
        elif new_status == "pending":
            self._work_at(None)
        return True

    async def record_progress(
        self,
        job_id: str,
        *,
        worker_id: str,
        attempt: int,
        progress: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store progress and merge ``metadata`` into the job's, fenced like :meth:`settle`.

        ``progress`` replaces both the progress and its message; a ``message``
        alone replaces only the message. ``metadata`` keys replace stored keys of
        the same name (a shallow merge).

        Returns:
            True when applied; False when the claim was no longer held.

        Raises:
            TypeError: ``metadata`` is not JSON-encodable; nothing changed.
        """
        extra = dict(metadata) if metadata is not None else None
        if extra is not None:
            encode_json(extra, "metadata")

        def op(conn: sqlite3.Connection, now: float) -> bool:
            row = conn.execute(
                f"SELECT metadata FROM jobs WHERE {_FENCE}", (job_id, attempt, worker_id)
            ).fetchone()
            if row is None:
                return False
            sets: list[str] = []
            params: list[Any] = []
            if progress is not None:
                sets += ["progress = ?", "progress_message = ?"]
                params += [progress, message]
            elif message is not None:
                sets.append("progress_message = ?")
                params.append(message)
            if extra:
                sets.append("metadata = ?")
                params.append(encode_json({**decode_json(row[0]), **extra}, "metadata"))
            if sets:
                conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*params, job_id))
            return True

        done = await self._write(op)
        if done:
            self._changed(job_id)
        return done

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Renew what keeps ``worker_id``'s claims on ``job_ids`` alive, in one write.

        A worker with a row (see :meth:`register_worker`) has its row renewed
        (``last_seen``, ``running``, an expiry :attr:`lease_duration` ahead) and no
        job written: its claims carry no lease of their own. A claim among
        ``job_ids`` that still has one (made before the row existed) is put under
        the row; a claim the row covers that the worker did not list (its claim
        never reached it) gets a lease of its own, left to run out, so that it is
        rescued instead of staying RUNNING for as long as the worker lives. A row
        that a rescuer dropped (the worker stalled past its expiry) is put back
        when the worker was registered through this store object.

        A worker without a row has the leases of ``job_ids`` renewed, as before
        the workers table: only the listed jobs, for the same reason.

        Returns:
            Which of these jobs someone asked to cancel, and which the worker no
            longer holds (rescued, settled elsewhere, or deleted).
        """
        held = frozenset(job_ids)
        info = self._workers.get(worker_id)
        if not held and info is None and not await self._has_row(worker_id):
            return Heartbeat()
        ids_json = encode_json(sorted(held), "job_ids")
        lease = self._lease

        def op(conn: sqlite3.Connection, now: float) -> list[Any]:
            if not renew_row(conn, worker_id, info, len(held), now, now + lease):
                return conn.execute(
                    "UPDATE jobs SET lease_expires_at = ?"
                    " WHERE id IN (SELECT value FROM json_each(?))"
                    " AND status = 'running' AND worker_id = ?"
                    " RETURNING id, cancel_requested",
                    (now + lease, ids_json, worker_id),
                ).fetchall()
            covered = conn.execute(
                f"SELECT id, cancel_requested {ROW_CLAIMS}", (worker_id,)
            ).fetchall()
            rows = [(job_id, flag) for job_id, flag in covered if job_id in held]
            orphans = [job_id for job_id, _ in covered if job_id not in held]
            if len(rows) < len(held):
                # Listed claims with a lease of their own: the row covers them now.
                rest = encode_json(sorted(held - {job_id for job_id, _ in rows}), "job_ids")
                rows += conn.execute(
                    "UPDATE jobs SET lease_expires_at = NULL"
                    " WHERE id IN (SELECT value FROM json_each(?))"
                    " AND status = 'running' AND worker_id = ?"
                    " RETURNING id, cancel_requested",
                    (rest, worker_id),
                ).fetchall()
            if orphans:
                conn.execute(
                    "UPDATE jobs SET lease_expires_at = ?"
                    " WHERE id IN (SELECT value FROM json_each(?))"
                    " AND status = 'running' AND worker_id = ? AND lease_expires_at IS NULL",
                    (now + lease, encode_json(orphans, "job_ids"), worker_id),
                )
            return rows

        rows = await self._write(op)
        return Heartbeat(
            cancel_requested=frozenset(job_id for job_id, flag in rows if flag),
            lost=held - {job_id for job_id, _ in rows},
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover the jobs of lost workers. Safe to run concurrently.

        Lost means: the worker's row expired (no heartbeat for
        :attr:`lease_duration`; its row is then dropped), or, for a claim with a
        lease of its own (a worker without a row), that lease expired. The crashed
        attempt stays counted. With attempts left the job goes back to PENDING;
        with none left it ends FAILED; if cancellation was requested it ends
        CANCELLED. In every case ``last_error`` records a ``WorkerLostError``
        naming the worker and the attempt.

        What it reads is the stale rows, their workers' claims and the expired
        leases, through three indexes: never the claims of live workers. It first
        checks, without the write lock, that anything expired at all.

        Returns:
            The rescued jobs' new snapshots.
        """

        def probe(conn: sqlite3.Connection, now: float) -> bool:
            return bool(conn.execute(ANY_EXPIRED, (now, now)).fetchone()[0])

        def op(conn: sqlite3.Connection, now: float) -> list[Any]:
            rows = []
            for seq, worker_id, attempts, max_attempts, cancel_requested, why in lost_claims(
                conn, now
            ):
                retry = attempts < max_attempts and not cancel_requested
                status = "cancelled" if cancel_requested else "pending" if retry else "failed"
                error = ErrorInfo(
                    message=f"worker {worker_id} was lost ({why}) during attempt {attempts}",
                    type="WorkerLostError",
                    attempt=attempts,
                    timestamp=datetime.fromtimestamp(now, UTC),
                    retryable=retry,
                )
                rows.append(
                    conn.execute(
                        "UPDATE jobs SET status = ?, last_error = ?, run_at = ?,"
                        " completed_at = ?, worker_id = NULL, lease_expires_at = NULL,"
                        " progress = CASE WHEN ? THEN NULL ELSE progress END,"
                        " progress_message = CASE WHEN ? THEN NULL ELSE progress_message END"
                        f" WHERE seq = ? RETURNING {COLUMNS}",
                        (
                            status,
                            encode_error(error),
                            now,
                            None if retry else now,
                            retry,
                            retry,
                            seq,
                        ),
                    ).fetchone()
                )
                if retry:
                    self._note_work()
            return rows

        rescued: list[Any] = await self._write(op, probe, [])
        jobs = [job_from_row(row) for row in rescued]
        for job in jobs:
            self._changed(job.id)
        if any(job.status is JobStatus.PENDING for job in jobs):
            self._work_at(None)
        return jobs

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a pending or retrying job at once, or flag a running one for its worker.

        A running job's worker learns of the request from its next
        :meth:`heartbeat`; workers in other processes waiting in
        :meth:`wait_for_cancel_request` are woken to send it at once.

        Returns:
            :attr:`CancelOutcome.CANCELLED`, :attr:`~CancelOutcome.REQUESTED`, or
            :attr:`~CancelOutcome.NOTHING` for an unknown or final job.
        """

        def op(conn: sqlite3.Connection, now: float) -> CancelOutcome:
            if conn.execute(
                "UPDATE jobs SET status = 'cancelled', completed_at = ?,"
                f" worker_id = NULL, lease_expires_at = NULL WHERE id = ? AND {READY}",
                (now, job_id),
            ).rowcount:
                return CancelOutcome.CANCELLED
            if conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                (job_id,),
            ).rowcount:
                if self._wake is not None:
                    self._wake.note(CANCEL)
                return CancelOutcome.REQUESTED
            return CancelOutcome.NOTHING

        outcome = await self._write(op)
        if outcome is not CancelOutcome.NOTHING:
            self._changed(job_id)
        if outcome is CancelOutcome.REQUESTED:
            wake_all(self._cancel_waiters)
        return outcome

    # -- threads, transactions, group commit --------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._closed:
                raise trio.ClosedResourceError(f"{self!r} is closed")
            raise RuntimeError(f"{self!r} is not open: call open() or use 'async with'")
        return self._conn

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread; the caller holds ``self._lock``."""
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._thread_limiter)
        except sqlite3.Error as exc:
            raise translate_error(self._path, exc) from exc

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            conn = self._require()
            return await self._in_thread(lambda: conn.execute(sql, params).fetchall())

    async def _write(self, op: Op[T], probe: Probe | None = None, empty: T | None = None) -> T:
        """Run ``op`` in a write transaction shared with the writes queued meanwhile.

        With a ``probe``, ``empty`` may be the answer instead (see :mod:`._commit`).
        """
        return await self._commit.write(op, probe=probe, empty=empty)

    def _note_work(self) -> None:
        """In a write: once it commits, wake the other stores waiting for work."""
        if self._wake is not None:
            self._wake.note(WORK)


@functools.cache
def _probe_sql(where: str) -> tuple[str, str]:
    """A claim's probe: is a job due? and when is the next one due? (by type filter)."""
    return (
        f"SELECT 1 FROM jobs INDEXED BY jobs_ready WHERE {DUE}{where} LIMIT 1",
        next_due_sql(where),
    )


def _check_delay(delay: float) -> None:
    if not 0 <= delay < math.inf:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
