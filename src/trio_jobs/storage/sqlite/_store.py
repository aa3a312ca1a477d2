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
"priority, then ``run_at``, then insertion order" is one index scan.

This module holds the store's worker-side methods; :mod:`._connect` opens the file
and names its errors; :mod:`._records` holds the reads, overwrites and
administration (a base class), :mod:`._schema` the migrations, column lists and
rows <-> jobs, and :mod:`._commit` the group commit.
"""

from __future__ import annotations

import heapq
import math
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import trio

from ..._records import ErrorInfo, Job, JobStatus
from .._base import CancelOutcome, Heartbeat, pop_due
from .._codec import decode_json, encode_error, encode_json
from ._commit import GroupCommit, Op
from ._connect import connect, translate_error
from ._records import RecordQueries, type_filter
from ._schema import (
    CLAIM_ORDER,
    COLUMNS,
    INSERT,
    READY,
    encode_record,
    job_from_row,
)
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION

T = TypeVar("T")

#: How often :meth:`SQLiteStorage.wait_for_work` checks whether another connection
#: (another process) committed: the delay before a worker notices a job submitted
#: elsewhere. Each check is one ``PRAGMA data_version`` in a worker thread.
CHANGE_POLL: Final = 0.02
#: The first such check of each wait comes sooner; the interval then doubles up to
#: :data:`CHANGE_POLL`.
CHANGE_POLL_FIRST: Final = 0.002

_FENCE: Final = "id = ? AND status = 'running' AND attempts = ? AND worker_id = ?"


class SQLiteStorage(RecordQueries):
    """A durable job store in one SQLite file: jobs survive restarts and crashes.

    Several processes on one machine may share the file: each claims jobs
    atomically, holds them under a lease renewed by :meth:`heartbeat`, and a job
    whose worker died comes back through :meth:`rescue_expired`. Payloads, results
    and metadata are stored as JSON. The tables are created (and migrated, never
    destructively) by :meth:`open`; use the store as ``async with SQLiteStorage(p)
    as store:``, or hand it to a runner, which opens and closes it.

    ``run_at`` on the records it returns is always set: the wall-clock time from
    which the job is (or was) eligible to run, its save time when it had no delay.

    Args:
        path: The database file; created when missing (its directory must exist).
            ``":memory:"`` gives a private in-memory database (tests).
        lease_duration: Seconds a claim stays valid without a heartbeat.

    Raises:
        TypeError: ``path`` is not a ``str`` or ``os.PathLike[str]``, or
            ``lease_duration`` is not a number.
        ValueError: ``lease_duration`` is not positive and finite.
    """

    def __init__(self, path: str | os.PathLike[str], *, lease_duration: float = 30.0) -> None:
        fspath = os.fspath(path) if isinstance(path, str | os.PathLike) else None
        if not isinstance(fspath, str):
            raise TypeError(f"path must be a str or os.PathLike[str], got {path!r}")
        if isinstance(lease_duration, bool) or not isinstance(lease_duration, int | float):
            raise TypeError(f"lease_duration must be a number, got {lease_duration!r}")
        if not 0 < lease_duration < math.inf:
            raise ValueError(f"lease_duration must be positive and finite, got {lease_duration!r}")
        self._path = fspath
        self._lease = float(lease_duration)
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # The connection is used by one thread at a time: whoever holds the lock.
        self._lock = trio.Lock()
        self._thread_limiter = trio.CapacityLimiter(1)
        # Group commit: writes wait in its queue; one flusher at a time runs it all.
        self._commit = GroupCommit(
            lock=self._lock,
            limiter=self._thread_limiter,
            connection=self._require,
            translate=partial(translate_error, self._path),
        )
        # Local wake-ups for wait_for_work / wait_for_change.
        self._work = trio.Event()
        #: ``PRAGMA data_version`` as the last claim saw it (see wait_for_work).
        self._seen_version: int | None = None
        self._work_flag = False
        self._due: list[float] = []
        self._changes: dict[str, trio.Event] = {}
        self._cancel_signal = trio.Event()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self._path!r}, lease_duration={self._lease!r})"

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def lease_duration(self) -> float:
        """Seconds a claim stays valid without a heartbeat."""
        return self._lease

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, switch to WAL, and create or migrate the tables. Idempotent.

        Raises:
            FileNotFoundError: The file's directory does not exist.
            OSError: The file cannot be opened or written (permissions, not a file).
            ValueError: The file is not a SQLite database, is corrupt, or holds a
                schema this version does not know (another program's, or a newer
                trio_jobs's).
            TimeoutError: Another connection held the database locked for longer
                than the busy timeout.
        """
        async with self._lock:
            if self._conn is None:
                self._conn = await self._in_thread(partial(connect, self._path))
                self._closed = False

    async def close(self) -> None:
        """Close the connection. Idempotent; the store may be opened again."""
        # Shielded: a cancelled close must still release the connection, and the
        # only wait is for a short query in flight.
        with trio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                self._closed = True
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

        Concurrent saves are committed together in one transaction.

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
            except sqlite3.IntegrityError:
                raise ValueError(f"a job with id {job.id!r} exists already") from None
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
        ``attempts + 1``, ``started_at`` and a lease of :attr:`lease_duration`.

        Returns:
            The claimed jobs' snapshots, in claim order.
        """
        where, types = type_filter(job_types)
        if limit <= 0 or (job_types is not None and not types):
            await trio.lowlevel.checkpoint()
            return []

        def claim(conn: sqlite3.Connection, now: float) -> list[Any]:
            # What the file looked like when we last looked for work: a commit from
            # another connection after this one is work wait_for_work must notice.
            self._seen_version = conn.execute("PRAGMA data_version").fetchone()[0]
            return conn.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
                " completed_at = NULL, worker_id = ?, lease_expires_at = ?"
                f" WHERE seq IN (SELECT seq FROM jobs INDEXED BY jobs_ready"
                f" WHERE {READY} AND run_at <= ?{where}"
                f" {CLAIM_ORDER} LIMIT ?) RETURNING {COLUMNS}, seq",
                (now, worker_id, now + self._lease, now, *types, limit),
            ).fetchall()

        rows = await self._write(claim)
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
        """Renew the leases of ``job_ids`` held by ``worker_id``, in one write.

        Only the listed jobs are renewed: a job claimed for this worker that the
        worker does not know it holds (its claim never reached it) lets its lease
        run out and is rescued, instead of staying RUNNING for as long as the
        worker lives.

        Returns:
            Which of these jobs someone asked to cancel, and which the worker no
            longer holds (rescued, settled elsewhere, or deleted).
        """
        held = frozenset(job_ids)
        if not held:
            await trio.lowlevel.checkpoint()
            return Heartbeat()
        ids_json = encode_json(sorted(held), "job_ids")

        def op(conn: sqlite3.Connection, now: float) -> list[Any]:
            return conn.execute(
                "UPDATE jobs SET lease_expires_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?))"
                " AND status = 'running' AND worker_id = ?"
                " RETURNING id, cancel_requested",
                (now + self._lease, ids_json, worker_id),
            ).fetchall()

        rows = await self._write(op)
        return Heartbeat(
            cancel_requested=frozenset(job_id for job_id, flag in rows if flag),
            lost=held - {job_id for job_id, _ in rows},
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover jobs whose lease expired (their worker died). Safe to run concurrently.

        The crashed attempt stays counted. With attempts left the job goes back to
        PENDING; with none left it ends FAILED; if cancellation was requested it
        ends CANCELLED. In every case ``last_error`` records a ``WorkerLostError``
        naming the worker and the attempt.

        Returns:
            The rescued jobs' new snapshots.
        """

        def op(conn: sqlite3.Connection, now: float) -> list[Any]:
            expired = conn.execute(
                "SELECT seq, worker_id, attempts, max_attempts, cancel_requested"
                " FROM jobs INDEXED BY jobs_leases"
                " WHERE status = 'running' AND lease_expires_at < ?",
                (now,),
            ).fetchall()
            rows = []
            for seq, worker_id, attempts, max_attempts, cancel_requested in expired:
                retry = attempts < max_attempts and not cancel_requested
                status = "cancelled" if cancel_requested else "pending" if retry else "failed"
                error = ErrorInfo(
                    message=(
                        f"worker {worker_id} was lost (lease expired) during attempt {attempts}"
                    ),
                    type="WorkerLostError",
                    attempt=attempts,
                    timestamp=datetime.fromtimestamp(now, UTC),
                    retryable=retry,
                )
                rows.append(
                    conn.execute(
                        "UPDATE jobs SET status = ?, last_error = ?, run_at = ?,"
                        " completed_at = ?, worker_id = NULL, lease_expires_at = NULL"
                        f" WHERE seq = ? RETURNING {COLUMNS}",
                        (status, encode_error(error), now, None if retry else now, seq),
                    ).fetchone()
                )
            return rows

        jobs = [job_from_row(row) for row in await self._write(op)]
        for job in jobs:
            self._changed(job.id)
        if any(job.status is JobStatus.PENDING for job in jobs):
            self._work_at(None)
        return jobs

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a pending or retrying job at once, or flag a running one for its worker.

        Returns:
            :attr:`CancelOutcome.CANCELLED`, :attr:`~CancelOutcome.REQUESTED` (the
            running job's worker learns of it from its next :meth:`heartbeat`), or
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
                return CancelOutcome.REQUESTED
            return CancelOutcome.NOTHING

        outcome = await self._write(op)
        if outcome is not CancelOutcome.NOTHING:
            self._changed(job_id)
        if outcome is CancelOutcome.REQUESTED:
            self._cancel_signal.set()
            self._cancel_signal = trio.Event()
        return outcome

    # -- waiting ----------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable, or after ``timeout`` seconds.

        Wakes at once on what this store object did: a save, a retry or release, a
        requeue or rescue, or the end of a delay it wrote. Commits of other
        connections (producers in other processes) are noticed within
        :data:`CHANGE_POLL` seconds through SQLite's change counter, a read of
        shared memory, so the caller claims again only when the file changed.
        """
        fired = self._pop_due()
        if fired or self._work_flag:
            self._work_flag = False
            await trio.lowlevel.checkpoint()
            return
        wait = timeout if not self._due else min(timeout, max(0.0, self._due[0] - time.time()))
        deadline = trio.current_time() + wait
        work = self._work
        # Compared with what the last claim saw, so that a commit landing between
        # that claim and this wait is noticed too.
        version = self._seen_version
        if version is None:
            version = await self._data_version()
        # Check soon after the last piece of work (a producer that just submitted is
        # likely to submit again), then back off to CHANGE_POLL while idle.
        poll = CHANGE_POLL_FIRST
        while not work.is_set():
            with trio.move_on_at(min(deadline, trio.current_time() + poll)):
                await work.wait()
            if trio.current_time() >= deadline or await self._data_version() != version:
                break
            poll = min(poll * 2, CHANGE_POLL)
        self._work_flag = False
        self._pop_due()

    async def _data_version(self) -> int:
        """Return the file's change counter: it moves when another connection commits."""
        rows = await self._read("PRAGMA data_version")
        return int(rows[0][0])

    async def wait_for_cancel_request(self, timeout: float) -> None:
        """Return when this store object flags a running job for cancellation, or on timeout.

        An optional extra of the protocol: a runner sharing this store object with
        the canceller learns of the request at once instead of at its next heartbeat.
        """
        with trio.move_on_after(timeout):
            await self._cancel_signal.wait()

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when this store object changed ``job_id``, or after ``timeout`` seconds."""
        event = self._changes.get(job_id)
        if event is None:
            event = self._changes[job_id] = trio.Event()
        try:
            with trio.move_on_after(timeout):
                await event.wait()
        finally:
            if self._changes.get(job_id) is event and event.statistics().tasks_waiting == 0:
                del self._changes[job_id]

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

    async def _write(self, op: Op[T]) -> T:
        """Run ``op`` in a write transaction shared with the writes queued meanwhile."""
        return await self._commit.write(op)

    # -- local wake-ups -----------------------------------------------------------------

    def _changed(self, job_id: str) -> None:
        event = self._changes.pop(job_id, None)
        if event is not None:
            event.set()

    def _work_at(self, when: float | None) -> None:
        """Wake wait_for_work now (``None``) or remember to at wall-clock ``when``."""
        if when is None:
            self._work_flag = True
            self._work.set()
            self._work = trio.Event()
        else:
            heapq.heappush(self._due, when)
            # A sleeping waiter must recompute its wake-up time.
            self._work.set()
            self._work = trio.Event()

    def _pop_due(self) -> bool:
        return pop_due(self._due, time.time())


def _check_delay(delay: float) -> None:
    if not 0 <= delay < math.inf:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
