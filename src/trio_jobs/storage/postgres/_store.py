r"""PostgreSQL store: many worker processes, on many machines, sharing one queue.

psycopg 3's async API runs only on asyncio, so the store drives the synchronous
driver from worker threads (``trio.to_thread.run_sync``), one pooled connection per
call, at most ``max_connections`` calls at once. A dedicated connection outside the
pool ``LISTEN``\ s for notifications in its own thread and wakes the waiting Trio
tasks, so a worker starts a submitted job without waiting for its poll.

This module holds the store's methods; the rest lives next to it:
:mod:`._sql` (migrations and every statement),
:mod:`._rows` (rows <-> jobs, NOTIFY payloads),
:mod:`._connect` (connections, the pool's retry, running migrations),
:mod:`._listen` (the LISTEN thread and the wake-ups it triggers),
:mod:`._batch` (the group commit of saves, settles and claims),
:mod:`._records` (reads, overwrites and administration, a base class) and
:mod:`._flow_methods` (flow control and the limited claim, a base class).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import attrs
import trio

from ..._records import ErrorInfo, Job, JobStatus, WorkerInfo
from .._base import CancelOutcome, Heartbeat
from .._codec import decode_json, encode_error, encode_json
from . import _rows as pg_rows
from . import _sql as sql
from ._batch import Batcher, BatchWriters, ClaimRequest, SettleRequest
from ._batches import BatchQueries
from ._browse import BrowseQueries
from ._connect import (
    check_schema,
    configure_connection,
    connect_listener,
    import_driver,
    migrate_schema,
    session_kwargs,
    with_connection,
)
from ._flow_methods import FlowMethods
from ._listen import Listener, ParkedClaim, Wakeups
from ._records import (
    check_limit,
    check_seconds,
    finite_or_none,
    type_list,
)

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from ._connect import Connection

T = TypeVar("T")

logger = logging.getLogger("trio_jobs.postgres")

_SCHEMA_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Channel names are identifiers too (at most 63 bytes): "<schema>.changed".
_MAX_SCHEMA_LENGTH: Final = 55
_POOL_TIMEOUT: Final = 15.0
_SETTLE_STATUSES: Final = frozenset(JobStatus) - {JobStatus.RUNNING}


@final
class PostgresStorage(BatchQueries, BrowseQueries, FlowMethods):
    """A durable job store on PostgreSQL, shared safely by many workers.

    Jobs live in the table ``<schema>.jobs``, created (and later migrated) on
    :meth:`open` under an advisory lock, so any number of workers may start at
    once. Workers claim jobs with ``FOR UPDATE SKIP LOCKED``, hold them under a
    lease they renew by heartbeat, and every write they make is fenced by
    (job, attempt, worker). ``LISTEN``/``NOTIFY`` wakes idle workers when a job
    becomes ready and tells a job's worker when someone asks to cancel it; the
    runner's poll remains the backstop. Payloads, results and metadata are stored
    as JSON text, so they come back exactly as they went in.

    Saves that tasks make at the same time are written together, one statement
    and one commit per batch; so are settles, and a worker's next claim rides in
    the same round trip and transaction as the settles that freed its slots. An
    idle worker's claim runs in the ``LISTEN`` thread the moment a notification
    of work arrives (:meth:`wait_and_claim`). Saves and settles are durable when
    they return; claims and heartbeats alone commit without waiting for the
    disk, since losing one in a crash of the *server* only runs a job again, as
    at-least-once delivery allows. A connection that dies under a statement is
    replaced and the statement retried; claims and settles carry a token, so a
    retry never applies twice what committed once. Sessions are named
    ``trio_jobs:<schema>`` in ``pg_stat_activity`` (unless the DSN names them).

    Use it as an async context manager, or hand it to a runner, which opens and
    closes it::

        async with JobRunner(storage=PostgresStorage("postgresql://...")) as runner:
            ...

    Args:
        dsn: A libpq connection string or URI.
        schema: The schema holding the store's tables, created when missing.
            Stores on different schemas are independent queues.
        lease_duration: Seconds a claim stays valid without a heartbeat; a
            worker that dies loses its jobs to the others this long after its
            last heartbeat.
        min_connections: Connections the pool keeps open.
        max_connections: Most connections (and worker threads) in use at once.
        read_only: Open without creating or migrating anything: :meth:`open`
            refuses a schema without trio_jobs tables ("no trio_jobs schema named X
            here"), or one not migrated to this version yet, with
            :class:`~trio_jobs.StorageCorruptError`. For tools that only look
            (``trio-jobs list``).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range (the message names it).

    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "trio_jobs",
        lease_duration: float = 30.0,
        min_connections: int = 1,
        max_connections: int = 10,
        read_only: bool = False,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, got {dsn!r}")
        if not isinstance(schema, str):
            raise TypeError(f"schema must be a str, got {schema!r}")
        if not _SCHEMA_RE.fullmatch(schema) or len(schema) > _MAX_SCHEMA_LENGTH:
            raise ValueError(
                f"schema must be an identifier (letters, digits, underscores; at most "
                f"{_MAX_SCHEMA_LENGTH} characters), got {schema!r}"
            )
        if isinstance(lease_duration, bool) or not isinstance(lease_duration, int | float):
            raise TypeError(f"lease_duration must be a number, got {lease_duration!r}")
        if not (lease_duration > 0 and math.isfinite(lease_duration)):
            raise ValueError(f"lease_duration must be > 0 and finite, got {lease_duration!r}")
        connections = (("min_connections", min_connections), ("max_connections", max_connections))
        for name, value in connections:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if min_connections < 1:
            raise ValueError(f"min_connections must be >= 1, got {min_connections!r}")
        if max_connections < min_connections:
            raise ValueError(
                f"max_connections must be >= min_connections ({min_connections}), "
                f"got {max_connections!r}"
            )
        self._dsn = dsn
        self._schema = schema
        self._purge_floors: dict[str, datetime] = {}
        self._read_only = bool(read_only)
        self._lease = float(lease_duration)
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._work_channel = f"{schema}.work"
        self._quoted = f'"{schema}"'
        #: The types with flow settings, as last read (None: read before the next claim).
        self._limited: frozenset[str] | None = None
        self._cancel_channel = f"{schema}.cancel"
        self._changed_channel = f"{schema}.changed"
        self._sql = sql.build_statements(
            schema, (self._work_channel, self._cancel_channel, self._changed_channel)
        )
        self._limiter = trio.CapacityLimiter(max_connections)
        #: Workers registered through this store: their heartbeat renews their row
        #: even when they hold no job, and puts it back if a rescue dropped it.
        self._registered: dict[str, WorkerInfo] = {}
        self._open_lock = trio.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._listener: Listener | None = None
        self._wakeups = Wakeups(
            work_channel=self._work_channel,
            cancel_channel=self._cancel_channel,
            changed_channel=self._changed_channel,
        )
        # Writes that tasks make at the same time go to the database together.
        writers = self._writers = BatchWriters(
            self._sql,
            schema,
            work_channel=self._work_channel,
            changed_channel=self._changed_channel,
        )
        self._saves = Batcher(self._run, writers.save_writer)
        # A worker's settles and its claims share transactions: see cycle_writer.
        self._cycle = Batcher(self._run, writers.cycle_writer, gather=True)

    def __repr__(self) -> str:
        return f"PostgresStorage(schema={self._schema!r}, open={self._pool is not None})"

    @property
    def lease_duration(self) -> float:
        """Seconds a claim stays valid without a heartbeat."""
        return self._lease

    @property
    def read_only(self) -> bool:
        """Whether :meth:`open` only checks the schema instead of creating or migrating it."""
        return self._read_only

    @property
    def schema(self) -> str:
        """The schema holding this store's tables."""
        return self._schema

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> PostgresStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, run pending migrations and start listening. Idempotent.

        Raises:
            ImportError: psycopg is not installed (``pip install 'trio-jobs[postgres]'``).
            psycopg.OperationalError: the database cannot be reached.
            StorageCorruptError: read-only, and the schema has no trio_jobs tables.

        """
        async with self._open_lock:
            if self._pool is not None:
                return
            pool_class = import_driver()
            if self._read_only:
                await trio.to_thread.run_sync(
                    partial(check_schema, self._dsn, self._schema, self._sql),
                    limiter=self._limiter,
                )
            else:
                await self.migrate()
            pool = pool_class(
                self._dsn,
                min_size=self._min_connections,
                max_size=self._max_connections,
                kwargs={"autocommit": True, **session_kwargs(self._dsn, self._schema)},
                configure=configure_connection,
                open=False,
                name=f"trio_jobs.{self._schema}",
                timeout=_POOL_TIMEOUT,
            )
            connect = partial(connect_listener, self._dsn, self._schema, self._sql)
            try:
                await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=_POOL_TIMEOUT))
                conn = await trio.to_thread.run_sync(connect)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pool.close)
                raise
            listener = Listener(
                connect=connect,
                token=trio.lowlevel.current_trio_token(),
                on_notify=self._wakeups.on_notify,
                on_reconnect=self._wakeups.on_reconnect,
                wants=self._wakeups.wants,
                listen_changed=self._sql.listen_changed,
                on_hearing_changes=self._wakeups.on_hearing_changes,
                work_channel=self._work_channel,
            )
            self._wakeups.request_changes = listener.hear_changes
            listener.start(conn)
            self._pool, self._listener = pool, listener
            await self._refresh_limited()  # so that a first claim needs no read first

    async def close(self) -> None:
        """Stop listening and close every connection. Idempotent.

        Finishes even when cancelled: the listener thread stops within a fraction
        of a second, and the pool's threads are joined.
        """
        with trio.CancelScope(shield=True):
            async with self._open_lock:
                listener, pool = self._listener, self._pool
                self._listener = self._pool = None
                if listener is not None:
                    await listener.stop()
                if pool is not None:
                    await trio.to_thread.run_sync(pool.close)
        await trio.lowlevel.checkpoint()

    async def migrate(self) -> int:
        """Bring the schema up to date and return its version.

        Creates the schema and its tables on first use. Migrations are versioned
        (table ``<schema>.schema_version``), only ever add, and run in one
        transaction under an advisory lock, so workers starting together apply
        each exactly once. :meth:`open` calls this; ``trio-jobs migrate`` runs it
        ahead of a deploy. The store need not be open.

        Returns:
            The schema's version after migrating.

        """
        import_driver()
        return await trio.to_thread.run_sync(
            partial(migrate_schema, self._dsn, self._schema, self._sql), limiter=self._limiter
        )

    # -- running statements -------------------------------------------------------

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("PostgresStorage is not open: use `async with` or await open()")
        return await trio.to_thread.run_sync(with_connection, pool, fn, limiter=self._limiter)

    # -- the seed's methods -------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Insert a new job; it becomes claimable ``delay`` seconds from now (server clock).

        Saves made at the same time by many tasks are inserted together, in one
        statement and one commit; then listening workers are notified (in a
        transaction of its own: see ``BatchWriters`` in ``_batch``).

        Raises:
            TypeError: the payload, metadata or result is not JSON-encodable (the
                message names the field); nothing is stored.
            ValueError: a job with this id exists already, or ``delay`` is negative.

        """
        delay = check_seconds(delay, "delay")
        if job.unique_key is not None:
            # Not in a shared batch: a key conflict must fail this save alone.
            (holder,) = await self.save_many([job], delay=delay)
            if holder != job.id:
                raise ValueError(f"an active job holds the unique_key {job.unique_key!r}")
            return
        record = pg_rows.job_record(job)
        record["delay"] = delay
        failure = await self._saves.submit(record)
        if failure is not None:
            raise failure
        self._wakeups.schedule_work(delay)

    # -- claims, leases, fenced writes --------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Atomically claim up to ``limit`` ready jobs for ``worker_id``, in one statement.

        A materialized ``FOR UPDATE SKIP LOCKED`` selection feeds one ``UPDATE``:
        concurrent claimers skip each other's rows instead of waiting, and no
        claim ever takes more than ``limit`` rows. Returns the claimed snapshots
        in claim order (priority, then ``run_at``, then insertion order).
        """
        limit = check_limit(limit)
        types = type_list(job_types)
        if limit == 0 or types == []:
            await trio.lowlevel.checkpoint()
            return []
        if await self._wants_limited(types):
            jobs = await self._claim_limited(worker_id, limit, types)
            if jobs is not None:
                return jobs
        request = ClaimRequest(worker_id=worker_id, limit=limit, types=types, lease=self._lease)
        # Cancelled once its batch took it, the claim still runs: its jobs go back.
        jobs = await self._cycle.submit(request, orphaned=partial(self._give_back, worker_id))
        assert isinstance(jobs, list)
        if not jobs:
            # Nothing ready (or all of it limited): look at the flow settings again
            # before the next claim, so that it goes straight to its batch. Never
            # when jobs were claimed: they must start without waiting for a read.
            await self._refresh_limited()
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
        """End an attempt, fenced on (job, running, attempt, worker); see the protocol.

        Settles made at the same time by many tasks are written together in one
        statement (a task waits for the write in flight, then writes everything
        queued meanwhile), so a busy worker makes one round trip per batch, not
        per job. A job given back (PENDING) or retrying now notifies listening
        workers; every applied settle notifies waiters on the job.

        Returns:
            True when applied; False when the claim was no longer held.

        Raises:
            TypeError: ``result`` is not JSON-encodable; nothing changed.
            ValueError: ``status`` is RUNNING, or ``delay`` is negative.

        """
        status = JobStatus(status)
        if status not in _SETTLE_STATUSES:
            raise ValueError(f"status must not be {status.value!r} when settling an attempt")
        delay = check_seconds(delay, "delay")
        request = SettleRequest(
            job_id=job_id,
            worker_id=worker_id,
            attempt=int(attempt),
            status=status.value,
            result=None if result is None else encode_json(result, "result"),
            error=encode_error(error),
            delay=delay,
            execution_time=finite_or_none(execution_time),
        )
        applied = await self._cycle.submit(request)
        if applied:
            self._wakeups.wake_change(job_id)
            if status in (JobStatus.PENDING, JobStatus.RETRYING):
                self._wakeups.schedule_work(delay)
        return bool(applied)

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

        A ``progress`` or ``message`` given replaces both stored values (a new
        progress without a message clears the old message); with neither, only
        the metadata changes. The merge is shallow (``dict.update``), read and
        written in one transaction with the row locked.

        Returns:
            True when applied; False when the claim was no longer held.

        Raises:
            TypeError: ``metadata`` is not JSON-encodable; nothing changed.

        """
        update: dict[str, Any] | None = None
        if metadata is not None:
            update = dict(metadata)
            encode_json(update, "metadata")
        params: dict[str, Any] = {
            "id": job_id,
            "worker_id": worker_id,
            "attempt": int(attempt),
            "progress": None if progress is None else float(progress),
            "message": message,
            "metadata": None,
        }

        def record(conn: Connection) -> bool:
            if update is None:
                return conn.execute(self._sql.progress, params).fetchone() is not None
            with conn.transaction():
                row = conn.execute(self._sql.metadata_for_update, params).fetchone()
                if row is None:
                    return False
                merged = dict(decode_json(row[0]) or {})
                merged.update(update)
                return (
                    conn.execute(
                        self._sql.progress, {**params, "metadata": encode_json(merged, "metadata")}
                    ).fetchone()
                    is not None
                )

        applied = await self._run(record)
        if applied:
            self._wakeups.wake_change(job_id)
        return applied

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Renew ``worker_id``'s row, or else the leases of ``job_ids`` it holds, in one statement.

        A worker with a row in the workers table (:meth:`register_worker`) renews
        that row only (``last_seen``, ``running``, its expiry) and writes no job:
        its jobs are read by primary key, to report cancel requests and lost
        claims. Jobs it holds without naming them, whose claim's lease has run
        out (a claim whose answer was lost, a settle given up on), are rescued
        like a lost worker's. A worker without a row renews the leases of the
        jobs it names, as before: a job claimed by a statement whose answer was
        lost is thereby left to expire and be rescued, instead of being held
        forever by a worker that never heard of it.
        """
        ids = list(job_ids)
        if not ids and worker_id not in self._registered:
            await trio.lowlevel.checkpoint()
            return Heartbeat()
        params = {"ids": ids, "worker_id": worker_id, "lease": self._lease, "running": len(ids)}

        def renew(conn: Connection) -> list[tuple[Any, ...]]:
            return conn.execute(self._sql.heartbeat, params).fetchall()

        rows = await self._run(renew)
        rowless = any(row[0] is None for row in rows)
        rows = [row for row in rows if row[0] is not None]
        held = {row[0] for row in rows if not row[2]}
        info = self._registered.get(worker_id)
        if rowless and info is not None:
            # Registered through this store, yet its row is gone: a rescuer found
            # it stale (the worker stalled past its expiry) and took its jobs,
            # reported lost below. Put the row back, so that workers() lists it
            # and its next claims are covered by it again.
            await self.register_worker(attrs.evolve(info, running=len(held)))
        orphans = [row[0] for row in rows if row[2]]
        if orphans:
            # The renewal is done; a failure here must not make it look failed
            # (the runner would fence its attempts). The next heartbeat retries.
            try:
                await self._rescue(self._sql.rescue_orphans, orphans=orphans, worker_id=worker_id)
            except Exception:
                logger.exception(
                    "could not rescue jobs %s that %s no longer holds", orphans, worker_id
                )
        return Heartbeat(
            cancel_requested=frozenset(row[0] for row in rows if row[1]),
            lost=frozenset(ids) - held,
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover the jobs of lost workers, in one statement safe to run from many workers.

        Rescued are the running jobs of workers whose row in the workers table
        expired (the rows are deleted), and the running jobs whose own lease
        expired among those claimed by workers without a row. With attempts left
        a job goes back to PENDING; with none it ends FAILED; either way its
        ``last_error`` says which worker was lost during which attempt (type
        ``"WorkerLostError"``). A job whose cancellation was requested ends
        CANCELLED. The statement reads only those jobs, plus one index probe per
        worker holding jobs: its cost does not grow with the jobs live workers run.

        Returns:
            The rescued jobs' new snapshots.

        """
        return await self._rescue(self._sql.rescue)

    async def _rescue(self, statement: str, **params: Any) -> list[Job[Any]]:
        params.update(changed_channel=self._changed_channel, work_channel=self._work_channel)

        def rescue(conn: Connection) -> list[Job[Any]]:
            return self._fetch_jobs(statement, params, conn)

        jobs = await self._run(rescue)
        for job in jobs:
            self._wakeups.wake_change(job.id)
        if any(job.status is JobStatus.PENDING for job in jobs):
            self._wakeups.wake_work()
        return jobs

    # -- the workers table --------------------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the row of ``info.worker_id``; it expires ``lease_duration`` from now.

        From then on :meth:`heartbeat` renews that row instead of the worker's
        jobs. ``last_seen`` and the expiry are the server's time;
        ``started_at``, ``running`` and the rest are taken from ``info``.
        """
        params = {
            "worker_id": info.worker_id,
            "hostname": info.hostname,
            "pid": int(info.pid),
            "started_at": info.started_at,
            "concurrency": int(info.concurrency),
            "running": int(info.running),
            "job_types": sorted(info.job_types),
            "lease": self._lease,
        }

        def register(conn: Connection) -> None:
            conn.execute(self._sql.register_worker, params)

        await self._run(register)
        self._registered[info.worker_id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row (its runner stopped cleanly). Idempotent.

        Jobs it still holds are then those of a worker without a row: rescued
        once their claim's lease has run out.
        """

        def unregister(conn: Connection) -> None:
            conn.execute(self._sql.unregister_worker, (worker_id,))

        self._registered.pop(worker_id, None)
        await self._run(unregister)

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers (whose row has not expired), oldest start first."""

        def read(conn: Connection) -> list[tuple[Any, ...]]:
            return conn.execute(self._sql.workers).fetchall()

        return [pg_rows.row_to_worker(row) for row in await self._run(read)]

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a pending or retrying job at once, or flag a running one for its worker.

        Flagging a running job notifies the cancel channel, which wakes
        :meth:`wait_for_cancel_request` in every worker.
        """
        params = {
            "id": job_id,
            "cancel_channel": self._cancel_channel,
            "changed_channel": self._changed_channel,
            "payload": pg_rows.id_payloads([job_id])[0],
        }

        def cancel(conn: Connection) -> str | None:
            row = conn.execute(self._sql.request_cancel, params).fetchone()
            return None if row is None else str(row[0])

        old_status = await self._run(cancel)
        if old_status is None:
            return CancelOutcome.NOTHING
        if old_status == JobStatus.RUNNING.value:
            self._wakeups.wake_cancel()
            return CancelOutcome.REQUESTED
        self._wakeups.wake_change(job_id)
        return CancelOutcome.CANCELLED

    # -- waiting ------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable, or after ``timeout`` seconds.

        Wakes on a local save, a notification from any process, or when a delay
        announced by one of those ends. A wake-up that arrived while nobody
        waited makes the next call return at once.
        """
        await self._wakeups.wait_for_work(timeout)

    async def wait_and_claim(
        self,
        worker_id: str,
        limit: int,
        job_types: Collection[str] | None,
        timeout: float,
    ) -> list[Job[Any]] | None:
        """Wait for work as :meth:`wait_for_work` does, claiming it the moment it is announced.

        Not part of :class:`JobStorage` (yet): an idle runner that finds it
        calls it instead of waiting and then claiming. The claim runs in the
        LISTEN thread as soon as a notification of ready work arrives, a thread
        hand-off and a round trip sooner than a claim sent after waking Trio.

        Returns:
            The jobs claimed on a notification, possibly none when another worker
            was quicker; or ``None`` when woken otherwise (a save in this process,
            a delay that ended, the timeout), and the caller then claims itself.

        """
        limit = check_limit(limit)
        types = type_list(job_types)
        listener = self._listener
        if listener is None or limit == 0 or types == [] or await self._wants_limited(types):
            await self.wait_for_work(timeout)
            return None
        request = ClaimRequest(worker_id=worker_id, limit=limit, types=types, lease=self._lease)
        parked = ParkedClaim(partial(self._writers.claim_now, request))
        listener.park(parked)
        interrupted = True
        try:
            await self._wakeups.wait_for_work(timeout)
            interrupted = False
        finally:
            if not listener.unpark(parked) and (interrupted or not parked.done.is_set()):
                # The thread has the claim: wait for its jobs (a statement's time).
                with trio.CancelScope(shield=True):
                    await parked.done.wait()
                    if interrupted:
                        await self._give_back(worker_id, parked.jobs or [])
        if not parked.done.is_set():
            return None
        if parked.jobs is None:
            # The claim failed. If its connection died after the commit, the jobs
            # are ours already: find them by the claim's token.
            return await self._run(partial(self._writers.claimed_by, request))
        return parked.jobs

    async def _give_back(self, worker_id: str, jobs: list[Job[Any]]) -> None:
        """Return claimed jobs nobody will run to PENDING, their attempt uncounted."""
        for job in jobs:
            try:
                await self.settle(
                    job.id, worker_id=worker_id, attempt=job.attempts, status=JobStatus.PENDING
                )
            except Exception:
                logger.exception("could not give back job %s; its lease will expire", job.id)

    async def wait_for_cancel_request(self, timeout: float) -> None:
        """Return when some job's cancellation may have been requested, or after ``timeout``.

        Not part of :class:`JobStorage` (yet): a runner that finds it uses it to
        learn of cancel requests without waiting for its next heartbeat, then asks
        :meth:`heartbeat` which of its jobs they concern.
        """
        await self._wakeups.wait_for_cancel_request(timeout)

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` may have changed (here or elsewhere), or after ``timeout``."""
        await self._wakeups.wait_for_change(job_id, timeout)

    async def wait_for_any_change(self, timeout: float) -> None:
        """Return when any job may have changed (here or elsewhere), or after ``timeout``.

        Not part of :class:`JobStorage`: for watchers such as ``trio-jobs list
        --follow``, woken by the notification every write sends.
        """
        await self._wakeups.wait_for_any_change(timeout)
