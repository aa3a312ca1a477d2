r"""PostgreSQL store: many worker processes, on many machines, sharing one queue.

psycopg 3's async API runs only on asyncio, so the store drives the synchronous
driver from worker threads (``trio.to_thread.run_sync``), one pooled connection per
call, at most ``max_connections`` calls at once. A dedicated connection outside the
pool ``LISTEN``\ s for notifications in its own thread and wakes the waiting Trio
tasks, so a worker starts a submitted job without waiting for its poll.

The statements themselves live in :mod:`._postgres_sql`.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import attrs
import outcome
import trio

from .._records import ErrorInfo, Job, JobStats, JobStatus
from . import _postgres_sql as sql
from ._base import CancelOutcome, Heartbeat
from ._codec import decode_json, encode_error, encode_json

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Connection = psycopg.Connection[tuple[Any, ...]]

logger = logging.getLogger("trio_jobs.postgres")

T = TypeVar("T")

_SCHEMA_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Channel names are identifiers too (at most 63 bytes): "<schema>.changed".
_MAX_SCHEMA_LENGTH: Final = 55
# How often the LISTEN thread looks up from its socket to see whether to stop.
_LISTEN_POLL: Final = 0.1
_RECONNECT_MIN: Final = 0.1
_RECONNECT_MAX: Final = 5.0
_POOL_TIMEOUT: Final = 15.0
# Batches of one kind written at once. One batches best: writes arriving while a
# batch is written make the next one. (Two or three measured no faster, and
# cost more client CPU per job.)
_MAX_FLUSHES: Final = 1
_CONNECT_KWARGS: Final[dict[str, Any]] = {
    "connect_timeout": 5,
    # A LISTEN connection only reads; keepalives notice a silently dead peer.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_FINAL_STATUSES: Final = frozenset(s for s in JobStatus if s.is_final)
_SETTLE_STATUSES: Final = frozenset(JobStatus) - {JobStatus.RUNNING}
_WAITING: Final = frozenset({JobStatus.PENDING.value, JobStatus.RETRYING.value})


def _import_driver() -> type[ConnectionPool]:
    try:
        import psycopg  # noqa: F401
        from psycopg_pool import ConnectionPool
    except ImportError as exc:
        raise ImportError(
            "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'trio-jobs[postgres]'"
        ) from exc
    return ConnectionPool


@final
class PostgresStorage:
    """A durable job store on PostgreSQL, shared safely by many workers.

    Jobs live in the table ``<schema>.jobs``, created (and later migrated) on
    :meth:`open` under an advisory lock, so any number of workers may start at
    once. Workers claim jobs with ``FOR UPDATE SKIP LOCKED``, hold them under a
    lease they renew by heartbeat, and every write they make is fenced by
    (job, attempt, worker). ``LISTEN``/``NOTIFY`` wakes idle workers when a job
    becomes ready and tells a job's worker when someone asks to cancel it; the
    runner's poll remains the backstop. Payloads, results and metadata are stored
    as JSON text, so they come back exactly as they went in.

    Saves and settles that tasks make at the same time are written together, one
    statement and one commit per batch. Saves and settles are durable when they
    return; claims and heartbeats commit without waiting for the disk, since
    losing one in a crash of the *server* only runs a job again, as
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
        self._lease = float(lease_duration)
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._work_channel = f"{schema}.work"
        self._cancel_channel = f"{schema}.cancel"
        self._changed_channel = f"{schema}.changed"
        self._sql = sql.build_statements(
            schema, (self._work_channel, self._cancel_channel, self._changed_channel)
        )
        self._limiter = trio.CapacityLimiter(max_connections)
        self._open_lock = trio.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._listener: _Listener | None = None
        # Wake-ups. A flag remembers a wake-up that came while nobody waited.
        self._work_flag = False
        self._work_event = trio.Event()
        self._due: list[float] = []  # Trio times at which delayed jobs become ready
        self._cancel_flag = False
        self._cancel_event = trio.Event()
        self._change_events: dict[str, trio.Event] = {}
        # Writes that tasks make at the same time go to the database together.
        self._saves = _Batcher(self._run, self._save_writer)
        self._settles = _Batcher(self._run, self._settle_writer)

    def __repr__(self) -> str:
        return f"PostgresStorage(schema={self._schema!r}, open={self._pool is not None})"

    @property
    def lease_duration(self) -> float:
        """Seconds a claim stays valid without a heartbeat."""
        return self._lease

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

        """
        async with self._open_lock:
            if self._pool is not None:
                return
            pool_class = _import_driver()
            await self.migrate()
            pool = pool_class(
                self._dsn,
                min_size=self._min_connections,
                max_size=self._max_connections,
                kwargs={"autocommit": True, **self._connect_kwargs()},
                configure=_configure_connection,
                open=False,
                name=f"trio_jobs.{self._schema}",
                timeout=_POOL_TIMEOUT,
            )
            try:
                await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=_POOL_TIMEOUT))
                conn = await trio.to_thread.run_sync(self._connect_listener)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pool.close)
                raise
            listener = _Listener(
                connect=self._connect_listener,
                token=trio.lowlevel.current_trio_token(),
                on_notify=self._on_notify,
                on_reconnect=self._on_listener_reconnect,
            )
            listener.start(conn)
            self._pool, self._listener = pool, listener

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
        _import_driver()
        return await trio.to_thread.run_sync(self._migrate_sync, limiter=self._limiter)

    def _migrate_sync(self) -> int:
        import psycopg

        with psycopg.connect(
            self._dsn,
            connect_timeout=_CONNECT_KWARGS["connect_timeout"],
            **self._connect_kwargs(":migrate"),
        ) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.advisory_key(self._schema),))
            # Look before creating: a worker whose role may not create anything
            # must still start on a schema someone migrated for it.
            row = conn.execute(self._sql.existing, {"schema": self._schema}).fetchone()
            schema_exists, table_exists = row if row else (False, False)
            if not schema_exists:
                conn.execute(f'CREATE SCHEMA "{self._schema}"')
            if not table_exists:
                conn.execute(self._sql.schema_version_table)
            row = conn.execute(self._sql.current_version).fetchone()
            version = int(row[0]) if row else 0
            if version > sql.LATEST_VERSION:
                logger.warning(
                    "schema %s is at version %d, newer than this trio_jobs knows (%d)",
                    self._schema,
                    version,
                    sql.LATEST_VERSION,
                )
            for target, build in sql.MIGRATIONS:
                if target <= version:
                    continue
                for statement in build(f'"{self._schema}"'):
                    conn.execute(statement)
                conn.execute(self._sql.record_version, (target,))
                logger.info("migrated schema %s to version %d", self._schema, target)
                version = target
            return version

    def _connect_kwargs(self, role: str = "") -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        # Name our sessions (unless the DSN does) so pg_stat_activity shows whose they are.
        if "application_name" in conninfo_to_dict(self._dsn):
            return {}
        return {"application_name": f"trio_jobs:{self._schema}{role}"}

    def _connect_listener(self) -> Connection:
        import psycopg

        conn = psycopg.connect(
            self._dsn, autocommit=True, **_CONNECT_KWARGS, **self._connect_kwargs(":listen")
        )
        try:
            for statement in self._sql.listen:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- running statements -------------------------------------------------------

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("PostgresStorage is not open: use `async with` or await open()")
        return await trio.to_thread.run_sync(_with_connection, pool, fn, limiter=self._limiter)

    # -- the seed's methods -------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Insert a new job; it becomes claimable ``delay`` seconds from now (server clock).

        Saves made at the same time by many tasks are inserted together, in one
        statement and one commit; then listening workers are notified (in a
        transaction of its own: see :meth:`_notify_quietly`).

        Raises:
            TypeError: the payload, metadata or result is not JSON-encodable (the
                message names the field); nothing is stored.
            ValueError: a job with this id exists already, or ``delay`` is negative.

        """
        delay = _check_seconds(delay, "delay")
        record = sql.job_record(job)
        record["delay"] = delay
        failure = await self._saves.submit(record)
        if failure is not None:
            raise failure
        self._schedule_work(delay)

    def _save_writer(
        self, batch: list[dict[str, Any]], answer: Callable[[list[Any]], None]
    ) -> Callable[[Connection], None]:
        """Return the function that inserts ``batch``, then tells ``answer`` what each save met.

        The answer for each save is ``None`` (inserted) or the ``ValueError``
        for a duplicate id. Rows carry the batch's token, so that a retry after a
        lost connection knows which rows its first try inserted.
        """
        token = uuid.uuid4().hex
        tries = 0

        def write(conn: Connection) -> None:
            nonlocal tries
            tries += 1
            ids = [record["id"] for record in batch]
            inserted: set[str] = set()
            if tries > 1:
                rows = conn.execute(self._sql.saved_by_token, (ids, token)).fetchall()
                inserted = {row[0] for row in rows}
            todo = [record for record in batch if record["id"] not in inserted]
            if todo:
                records = json.dumps([sql.json_record(record) for record in todo])
                rows = conn.execute(
                    self._sql.insert_many, {"batch": records, "token": token}
                ).fetchall()
                inserted.update(row[0] for row in rows)
            answers: list[Any] = []
            taken: set[str] = set()
            for record in batch:
                job_id = record["id"]
                ours = job_id in inserted or (
                    # Inserted by the first try, and claimed since (new token)?
                    tries > 1 and self._is_same_job(conn, record)
                )
                if ours and job_id not in taken:
                    taken.add(job_id)
                    answers.append(None)
                else:
                    answers.append(ValueError(f"a job with id {job_id!r} exists already"))
            answer(answers)
            delays = [r["delay"] for r, a in zip(batch, answers, strict=True) if a is None]
            if delays:
                # The payload is the delay: a listener wakes itself when it ends.
                self._notify_quietly(conn, [(self._work_channel, repr(min(delays)))])

        return write

    def _is_same_job(self, conn: Connection, params: Mapping[str, Any]) -> bool:
        row = conn.execute(
            f'SELECT type, payload, created_at FROM "{self._schema}".jobs WHERE id = %s',
            (params["id"],),
        ).fetchone()
        return row is not None and row == (params["type"], params["payload"], params["created_at"])

    async def update(self, job: Job[Any]) -> None:
        """Overwrite a job's record unconditionally, or insert it (administrative; not fenced).

        A job written with a non-running status loses any lease and cancellation
        request it had. Its ``run_at``, when set, also becomes the time from which
        it can be claimed.

        Raises:
            TypeError: a field is not JSON-encodable; nothing changed.

        """
        params = sql.job_record(job)

        def update(conn: Connection) -> None:
            with conn.transaction():
                if conn.execute(self._sql.update, params).fetchone() is None:
                    conn.execute(self._sql.insert_as_is, params)
                conn.execute(
                    self._sql.notify, (self._changed_channel, sql.id_payloads([job.id])[0])
                )
                if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
                    conn.execute(self._sql.notify, (self._work_channel, "0"))

        await self._run(update)
        self._wake_change(job.id)
        if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
            self._wake_work()

    async def get(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""

        def get(conn: Connection) -> Job[Any] | None:
            row = conn.execute(self._sql.get, (job_id,)).fetchone()
            return None if row is None else sql.row_to_job(row)

        return await self._run(get)

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Return (without claiming) up to ``limit`` ready jobs in claim order."""
        limit = _check_limit(limit)
        return await self._run(partial(self._fetch_jobs, self._sql.get_next_pending, (limit,)))

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Return jobs with ``status``, oldest first (at most ``limit``; ``None``: all)."""
        status = JobStatus(status)
        limit = None if limit is None else _check_limit(limit)
        return await self._run(
            partial(self._fetch_jobs, self._sql.get_by_status, (status.value, limit))
        )

    def _fetch_jobs(self, statement: str, params: Any, conn: Connection) -> list[Job[Any]]:
        return [sql.row_to_job(row) for row in conn.execute(statement, params).fetchall()]

    async def mark_running(self, job_id: str) -> bool:
        """Move one job from PENDING to RUNNING (counting an attempt); True only for the mover.

        The seed's claim, kept for compatibility: it takes no lease, so a crash
        of the caller leaves the job RUNNING forever. Workers use :meth:`claim`.
        """

        def mark(conn: Connection) -> bool:
            return conn.execute(self._sql.mark_running, (job_id,)).fetchone() is not None

        moved = await self._run(mark)
        if moved:
            self._wake_change(job_id)
        return moved

    async def delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed. Its worker learns at its next heartbeat."""

        def delete(conn: Connection) -> bool:
            with conn.transaction():
                if conn.execute(self._sql.delete, (job_id,)).fetchone() is None:
                    return False
                conn.execute(
                    self._sql.notify, (self._changed_channel, sql.id_payloads([job_id])[0])
                )
                return True

        deleted = await self._run(delete)
        if deleted:
            self._wake_change(job_id)
        return deleted

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Count jobs by status (only of ``job_types`` when given)."""
        types = _types(job_types)
        if types == []:
            await trio.lowlevel.checkpoint()
            return JobStats()

        def stats(conn: Connection) -> list[tuple[Any, ...]]:
            if types is None:
                return conn.execute(self._sql.stats).fetchall()
            return conn.execute(self._sql.stats_types, (types,)).fetchall()

        counts: dict[str, int] = {}
        average: float | None = None
        for status, count, avg in await self._run(stats):
            counts[status] = int(count)
            if status == JobStatus.COMPLETED.value and avg is not None:
                average = float(avg)
        return JobStats(
            **{s.value: counts.get(s.value, 0) for s in JobStatus},
            total_processed=sum(counts.get(s.value, 0) for s in _FINAL_STATUSES),
            average_execution_time=average,
        )

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
        limit = _check_limit(limit)
        types = _types(job_types)
        if limit == 0 or types == []:
            await trio.lowlevel.checkpoint()
            return []
        params = {
            "limit": limit,
            "worker_id": worker_id,
            "lease": self._lease,
            "types": types,
            "token": uuid.uuid4().hex,
        }
        statement = self._sql.claim if types is None else self._sql.claim_types
        tries = 0

        def claim(conn: Connection) -> list[Job[Any]]:
            nonlocal tries
            tries += 1
            rows: list[tuple[Any, ...]] = []
            if tries > 1:
                # The connection died under the first try: it may have claimed.
                rows = conn.execute(self._sql.claimed_by_token, params).fetchall()
            if not rows:
                rows = conn.execute(statement, params).fetchall()
            rows.sort(key=lambda row: (-row[4], row[-2], row[-1]))
            return [sql.row_to_job(row) for row in rows]

        return await self._run(claim)

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
        delay = _check_seconds(delay, "delay")
        request = _SettleRequest(
            job_id=job_id,
            worker_id=worker_id,
            attempt=int(attempt),
            status=status.value,
            result=None if result is None else encode_json(result, "result"),
            error=encode_error(error),
            delay=delay,
            execution_time=_finite_or_none(execution_time),
        )
        applied = await self._settles.submit(request)
        if applied:
            self._wake_change(job_id)
            if status in (JobStatus.PENDING, JobStatus.RETRYING):
                self._schedule_work(delay)
        return bool(applied)

    def _notify_changed(self, conn: Connection, job_id: str) -> None:
        """Announce, inside the caller's transaction, that ``job_id`` changed."""
        conn.execute(self._sql.notify, (self._changed_channel, sql.id_payloads([job_id])[0]))

    def _notify_quietly(self, conn: Connection, notes: list[tuple[str, str]]) -> None:
        """Send notifications in a transaction of their own (it writes no WAL).

        A lost notification costs only latency (pollers find the work), so a
        failure here is logged, never raised: the change it announces is committed.
        """
        import psycopg

        if not notes:
            return
        try:
            conn.execute(self._sql.notify_many, (json.dumps(notes),))
        except psycopg.OperationalError as exc:
            logger.warning("could not send notifications (%s); polling covers them", exc)

    def _settle_writer(
        self, batch: list[_SettleRequest], answer: Callable[[list[Any]], None]
    ) -> Callable[[Connection], None]:
        """Return the function that writes ``batch``, then tells ``answer`` which settles applied.

        Every row it writes carries the batch's token, so when the connection dies
        under the statement, the retry (on a fresh connection) first asks which
        rows the first try wrote, and writes only the others: a settle that
        committed is reported as applied, never refused as a lost claim.
        """
        token = uuid.uuid4().hex
        tries = 0

        def write(conn: Connection) -> None:
            nonlocal tries
            tries += 1
            applied: set[int] = set()
            if tries > 1:
                rows = conn.execute(
                    self._sql.settled_by_token, ([r.job_id for r in batch], token)
                ).fetchall()
                written = {row[0] for row in rows}
                for index, request in enumerate(batch):
                    if request.job_id in written:
                        written.discard(request.job_id)  # a duplicate applied once
                        applied.add(index)
            todo = [index for index in range(len(batch)) if index not in applied]
            delays: list[float] = []
            if todo:
                batch_json = json.dumps([_settle_record(batch[index]) for index in todo])
                rows = conn.execute(
                    self._sql.settle, {"batch": batch_json, "token": token}
                ).fetchall()
                for idx, status in rows:
                    index = todo[int(idx) - 1]
                    applied.add(index)
                    if status in _WAITING:
                        delays.append(batch[index].delay)
            answer([index in applied for index in range(len(batch))])
            notes = [
                (self._changed_channel, payload)
                for payload in sql.id_payloads(batch[index].job_id for index in applied)
            ]
            if delays:
                notes.append((self._work_channel, repr(min(delays))))
            self._notify_quietly(conn, notes)

        return write

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
            self._wake_change(job_id)
        return applied

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Renew the leases of ``job_ids`` held by ``worker_id``, in one statement.

        Only the jobs the worker names are renewed: a job claimed by a statement
        whose answer was lost with its connection is thereby left to expire and be
        rescued, instead of being held forever by a worker that never heard of it.
        """
        ids = list(job_ids)
        if not ids:
            await trio.lowlevel.checkpoint()
            return Heartbeat()
        params = {"ids": ids, "worker_id": worker_id, "lease": self._lease}

        def renew(conn: Connection) -> list[tuple[Any, ...]]:
            return conn.execute(self._sql.heartbeat, params).fetchall()

        rows = await self._run(renew)
        held = {row[0] for row in rows}
        return Heartbeat(
            cancel_requested=frozenset(row[0] for row in rows if row[1]),
            lost=frozenset(ids) - held,
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover jobs whose lease expired, in one statement safe to run from many workers.

        With attempts left a job goes back to PENDING; with none it ends FAILED;
        either way its ``last_error`` says which worker was lost during which
        attempt (type ``"WorkerLostError"``). A job whose cancellation was
        requested ends CANCELLED.

        Returns:
            The rescued jobs' new snapshots.

        """
        params = {"changed_channel": self._changed_channel, "work_channel": self._work_channel}

        def rescue(conn: Connection) -> list[Job[Any]]:
            return self._fetch_jobs(self._sql.rescue, params, conn)

        jobs = await self._run(rescue)
        for job in jobs:
            self._wake_change(job.id)
        if any(job.status is JobStatus.PENDING for job in jobs):
            self._wake_work()
        return jobs

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a pending or retrying job at once, or flag a running one for its worker.

        Flagging a running job notifies the cancel channel, which wakes
        :meth:`wait_for_cancel_request` in every worker.
        """
        params = {
            "id": job_id,
            "cancel_channel": self._cancel_channel,
            "changed_channel": self._changed_channel,
            "payload": sql.id_payloads([job_id])[0],
        }

        def cancel(conn: Connection) -> str | None:
            row = conn.execute(self._sql.request_cancel, params).fetchone()
            return None if row is None else str(row[0])

        old_status = await self._run(cancel)
        if old_status is None:
            return CancelOutcome.NOTHING
        if old_status == JobStatus.RUNNING.value:
            self._wake_cancel()
            return CancelOutcome.REQUESTED
        self._wake_change(job_id)
        return CancelOutcome.CANCELLED

    # -- waiting ------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable, or after ``timeout`` seconds.

        Wakes on a local save, a notification from any process, or when a delay
        announced by one of those ends. A wake-up that arrived while nobody
        waited makes the next call return at once.
        """
        await trio.lowlevel.checkpoint()
        deadline = trio.current_time() + max(timeout, 0.0)
        while True:
            if self._work_flag or self._pop_due():
                self._work_flag = False
                return
            if trio.current_time() >= deadline:
                return
            with trio.move_on_at(min(deadline, self._due[0] if self._due else math.inf)):
                await self._work_event.wait()

    async def wait_for_cancel_request(self, timeout: float) -> None:
        """Return when some job's cancellation may have been requested, or after ``timeout``.

        Not part of :class:`JobStorage` (yet): a runner that finds it uses it to
        learn of cancel requests without waiting for its next heartbeat, then asks
        :meth:`heartbeat` which of its jobs they concern.
        """
        await trio.lowlevel.checkpoint()
        if not self._cancel_flag:
            with trio.move_on_after(max(timeout, 0.0)):
                await self._cancel_event.wait()
        self._cancel_flag = False

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` may have changed (here or elsewhere), or after ``timeout``."""
        event = self._change_events.get(job_id)
        if event is None:
            event = self._change_events[job_id] = trio.Event()
        try:
            with trio.move_on_after(max(timeout, 0.0)):
                await event.wait()
        finally:
            if (
                not event.is_set()
                and event.statistics().tasks_waiting == 0
                and self._change_events.get(job_id) is event
            ):
                del self._change_events[job_id]

    def _wake_work(self) -> None:
        self._work_flag = True
        self._work_event.set()
        self._work_event = trio.Event()

    def _schedule_work(self, delay: float) -> None:
        if delay <= 0:
            self._wake_work()
            return
        heapq.heappush(self._due, trio.current_time() + delay)
        # Waiters recompute their deadline; this is not a wake-up (no flag).
        self._work_event.set()
        self._work_event = trio.Event()

    def _pop_due(self) -> bool:
        now = trio.current_time()
        popped = False
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
            popped = True
        return popped

    def _wake_cancel(self) -> None:
        self._cancel_flag = True
        self._cancel_event.set()
        self._cancel_event = trio.Event()

    def _wake_change(self, job_id: str) -> None:
        event = self._change_events.pop(job_id, None)
        if event is not None:
            event.set()

    def _wake_all_changes(self) -> None:
        events, self._change_events = self._change_events, {}
        for event in events.values():
            event.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        """Handle one notification (in the Trio thread, from the listener)."""
        if channel == self._work_channel:
            try:
                delay = float(payload or 0)
            except ValueError:
                delay = 0.0
            self._schedule_work(delay if math.isfinite(delay) else 0.0)
        elif channel == self._cancel_channel:
            self._wake_cancel()
        elif channel == self._changed_channel:
            for job_id in payload.split("\n"):
                if job_id == "*":
                    self._wake_all_changes()
                    break
                self._wake_change(job_id)

    def _on_listener_reconnect(self) -> None:
        # Notifications sent while the connection was down are lost: wake everyone.
        self._wake_work()
        self._wake_cancel()
        self._wake_all_changes()

    # -- administration -----------------------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return jobs, newest first, filtered by status and type."""
        params = {
            "status": None if status is None else JobStatus(status).value,
            "type": job_type,
            "limit": None if limit is None else _check_limit(limit),
        }
        return await self._run(partial(self._fetch_jobs, self._sql.list_jobs, params))

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Count jobs that are PENDING, RETRYING or RUNNING (only of ``job_types`` when given)."""
        types = _types(job_types)
        if types == []:
            await trio.lowlevel.checkpoint()
            return 0

        def count(conn: Connection) -> int:
            if types is None:
                row = conn.execute(self._sql.count_unfinished).fetchone()
            else:
                row = conn.execute(self._sql.count_unfinished_types, (types,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(count)

    async def requeue(self, job_id: str) -> bool:
        """Give a FAILED, TIMEOUT or CANCELLED job a fresh start (PENDING, attempts 0).

        The result, progress and timestamps of its last run are cleared; its
        ``last_error`` and ``execution_time`` are kept, to say how it last went.
        It queues behind the jobs already waiting at its priority.
        """

        def requeue(conn: Connection) -> bool:
            with conn.transaction():
                if conn.execute(self._sql.requeue, (job_id,)).fetchone() is None:
                    return False
                conn.execute(
                    self._sql.notify, (self._changed_channel, sql.id_payloads([job_id])[0])
                )
                conn.execute(self._sql.notify, (self._work_channel, "0"))
                return True

        requeued = await self._run(requeue)
        if requeued:
            self._wake_change(job_id)
            self._wake_work()
        return requeued

    async def purge(self, older_than: float) -> int:
        """Delete final jobs completed more than ``older_than`` seconds ago; return how many."""
        older_than = _check_seconds(older_than, "older_than", allow_inf=True)
        if math.isinf(older_than):
            await trio.lowlevel.checkpoint()
            return 0

        def purge(conn: Connection) -> int:
            return conn.execute(self._sql.purge, (older_than,)).rowcount

        return await self._run(purge)


@attrs.frozen
class _SettleRequest:
    """One settle, encoded, as a batch writes it."""

    job_id: str
    worker_id: str
    attempt: int
    status: str
    result: str | None
    error: str | None
    delay: float
    execution_time: float | None


@attrs.define(eq=False)
class _Entry:
    """One write waiting in a :class:`_Batcher`, and, once written, its answer."""

    item: Any
    queued: bool = True
    done: bool = False
    answer: Any = None
    failure: Exception | None = None


class _Batcher:
    """Writes what tasks ask for at the same time in one statement (group commit).

    A task queues its write; when no batch is being written, it writes the whole
    queue itself, its own write among them; otherwise it waits for that batch to
    end and looks again. Writes arriving while a batch is in flight thus make the
    next batch: one round trip and one commit per batch instead of per write,
    with no added latency when the store is idle. The writing thread hands the
    answers back as soon as the statement has committed (before it sends its
    notifications), so the next batch starts without waiting for them.
    """

    def __init__(
        self,
        run: Callable[[Callable[[Connection], None]], Awaitable[None]],
        make_writer: Callable[
            [list[Any], Callable[[list[Any]], None]], Callable[[Connection], None]
        ],
    ) -> None:
        self._run = run
        self._make_writer = make_writer
        self._queue: list[_Entry] = []
        self._flushes: set[object] = set()  # the batches being written
        self._flushed = trio.Event()

    async def submit(self, item: Any) -> Any:
        """Write ``item`` with whatever else is queued; return its answer.

        Raises:
            Exception: the batch's statement failed (every write in it gets the error).
        """
        entry = _Entry(item)
        self._queue.append(entry)
        try:
            while not entry.done:
                if entry.queued and len(self._flushes) < _MAX_FLUSHES:
                    await self._flush()
                else:
                    await self._flushed.wait()
        except BaseException:
            if entry.queued:
                self._queue.remove(entry)
            raise
        if entry.failure is not None:
            raise entry.failure
        return entry.answer

    async def _flush(self) -> None:
        flush = object()
        self._flushes.add(flush)
        batch, self._queue = self._queue, []
        for entry in batch:
            entry.queued = False
        token = trio.lowlevel.current_trio_token()

        def answer(answers: list[Any]) -> None:  # in the writing thread
            token.run_sync_soon(self._answered, flush, batch, answers)

        try:
            await self._run(self._make_writer([entry.item for entry in batch], answer))
        except Exception as exc:
            for entry in batch:
                if not entry.done:
                    entry.done, entry.failure = True, exc
        except BaseException:
            # Cancelled before the statement was sent: the others go back in line.
            back = [entry for entry in batch if not entry.done]
            for entry in back:
                entry.queued = True
            self._queue[:0] = back
            raise
        finally:
            self._answered(flush, batch, None)

    def _answered(self, flush: object, batch: list[_Entry], answers: list[Any] | None) -> None:
        """Record a batch's answers (when given) and end its flush, if not ended yet."""
        if answers is not None:
            for entry, answer in zip(batch, answers, strict=True):
                entry.done, entry.answer = True, answer
        if flush in self._flushes:
            self._flushes.discard(flush)
            flushed, self._flushed = self._flushed, trio.Event()
            flushed.set()


class _Listener:
    """The LISTEN connection and the thread that waits on it.

    The thread wakes every :data:`_LISTEN_POLL` seconds to see whether it should
    stop, so :meth:`stop` returns promptly and leaves no thread behind. When the
    connection drops it reconnects with exponential backoff, logging both.
    Notifications reach Trio through ``TrioToken.run_sync_soon``: the thread never
    waits for the Trio loop.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Connection],
        token: trio.lowlevel.TrioToken,
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._token = token
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._stopping = threading.Event()
        self._stopped = trio.Event()

    def start(self, conn: Connection) -> None:
        # A thread of its own, not trio.to_thread: it lives as long as the store and
        # must not hold one of the limiter's tokens, nor need a task to await it.
        trio.lowlevel.start_thread_soon(
            partial(self._run, conn), self._finished, name="trio_jobs postgres LISTEN"
        )

    async def stop(self) -> None:
        self._stopping.set()
        await self._stopped.wait()

    def _post(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def _finished(self, result: outcome.Outcome[None]) -> None:
        if isinstance(result, outcome.Error):
            logger.error("the LISTEN thread crashed", exc_info=result.error)
        self._post(self._stopped.set)

    def _run(self, conn: Connection | None) -> None:
        import psycopg

        backoff = _RECONNECT_MIN
        try:
            while not self._stopping.is_set():
                if conn is None:
                    try:
                        conn = self._connect()
                    except psycopg.Error as exc:
                        logger.warning(
                            "LISTEN connection to PostgreSQL failed (%s); retrying in %.1f s",
                            str(exc).strip(),
                            backoff,
                        )
                        self._stopping.wait(backoff)
                        backoff = min(backoff * 2, _RECONNECT_MAX)
                        continue
                    logger.warning("LISTEN connection to PostgreSQL re-established")
                    backoff = _RECONNECT_MIN
                    if not self._post(self._on_reconnect):
                        return
                try:
                    for note in conn.notifies(timeout=_LISTEN_POLL):
                        if not self._post(self._on_notify, note.channel, note.payload):
                            return
                    # Also ends the thread when the Trio run ended without close().
                    if not self._post(_nothing):
                        return
                except psycopg.Error as exc:
                    logger.warning(
                        "LISTEN connection to PostgreSQL lost (%s); reconnecting; "
                        "polling covers the gap",
                        str(exc).strip(),
                    )
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


def _with_connection(pool: ConnectionPool[Connection], fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a pooled connection (in a worker thread).

    If the connection turns out to be dead (say, its backend was terminated
    while it sat in the pool), the pool is checked and ``fn`` runs once more on a
    fresh connection. Every statement the store sends is one transaction that
    either reads, is fenced, or is idempotent, so a retry cannot apply twice what
    was meant once; a claim whose answer was lost leaves jobs that are rescued
    when their lease expires.
    """
    import psycopg

    used: Connection | None = None
    try:
        with pool.connection() as conn:
            used = conn
            return fn(conn)
    except psycopg.OperationalError as exc:
        if used is None or not used.closed:
            raise
        logger.warning(
            "PostgreSQL connection lost (%s); retrying on a fresh connection", str(exc).strip()
        )
    pool.check()
    with pool.connection() as conn:
        return fn(conn)


def _settle_record(request: _SettleRequest) -> dict[str, Any]:
    return {
        "id": request.job_id,
        "worker_id": request.worker_id,
        "attempt": request.attempt,
        "status": request.status,
        "result": request.result,
        "error": request.error,
        "delay": request.delay,
        "execution_time": request.execution_time,
    }


def _nothing() -> None:
    pass


def _configure_connection(conn: Connection) -> None:
    # Timestamps come back as UTC datetimes whatever the server's default zone.
    conn.execute("SET TIME ZONE 'UTC'")


def _types(job_types: Collection[str] | None) -> list[str] | None:
    if job_types is None:
        return None
    if isinstance(job_types, str):
        raise TypeError("job_types must be a collection of type names, not a str")
    return list(job_types)


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {limit!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit!r}")
    return limit


def _check_seconds(value: float, name: str, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not value >= 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)
