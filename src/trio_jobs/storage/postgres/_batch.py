"""The group commit of :class:`PostgresStorage`: saves and settles written in batches.

Tasks that save or settle at the same time queue their writes in a :class:`Batcher`,
which writes the whole queue in one statement and one commit per batch.
:class:`BatchWriters` builds those statements' thread functions: each batch carries a
token, so a retry on a fresh connection (after the first one died under the
statement) applies only what the first try did not, and reports what it did.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..._records import JobStatus
from . import _rows as pg_rows
from . import _sql as sql

if TYPE_CHECKING:
    from psycopg import Cursor as _Cursor

    from ..._records import Job
    from ._connect import Connection

    Cursor = _Cursor[tuple[Any, ...]]

logger = logging.getLogger("trio_jobs.postgres")

# Batches of one kind written at once. One batches best: writes arriving while a
# batch is written make the next one. (Two or three measured no faster, and
# cost more client CPU per job.)
MAX_FLUSHES: Final = 1
#: Turns of Trio's scheduler a batch waits for the rest of a burst (see Batcher._gather).
GATHER_TURNS: Final = 2
_WAITING: Final = frozenset({JobStatus.PENDING.value, JobStatus.RETRYING.value})


@attrs.define(eq=False)
class _Entry:
    """One write waiting in a :class:`Batcher`, and, once written, its answer."""

    item: Any
    queued: bool = True
    done: bool = False
    answer: Any = None
    failure: Exception | None = None


class Batcher:
    """Writes what tasks ask for at the same time in one statement (group commit).

    A task queues its write; when no batch is being written, it writes the whole
    queue itself, its own write among them; otherwise it waits for that batch to
    end and looks again. Writes arriving while a batch is in flight thus make the
    next batch: one round trip and one commit per batch instead of per write.
    With ``gather``, the first write of a burst waits :data:`GATHER_TURNS` turns
    of Trio's scheduler for the rest (see :meth:`_gather`); without, an idle
    store adds no latency at all.

    Args:
        run: Runs a function on a pooled connection in a worker thread.
        make_writer: Builds, for a batch, the function that writes it (in the
            thread) and returns the answer to each write, in order.
        gather: Whether a batch waits for the rest of its burst.
    """

    def __init__(
        self,
        run: Callable[[Callable[[Connection], list[Any]]], Awaitable[list[Any]]],
        make_writer: Callable[[list[Any]], Callable[[Connection], list[Any]]],
        *,
        gather: bool = False,
    ) -> None:
        self._run = run
        self._make_writer = make_writer
        self._gather_turns = GATHER_TURNS if gather else 0
        self._queue: list[_Entry] = []
        self._flushes: set[object] = set()  # the batches being written
        self._gathering = False  # a task is waiting for the burst before it writes
        self._flushed = trio.Event()

    async def submit(
        self, item: Any, *, orphaned: Callable[[Any], Awaitable[object]] | None = None
    ) -> Any:
        """Write ``item`` with whatever else is queued; return its answer.

        A write can be cancelled until a batch takes it. After that its statement
        runs whatever the caller does, so a cancelled caller waits for the answer
        (a statement's time, shielded) and hands it to ``orphaned`` before the
        cancellation goes on: an answer is never dropped (a claim's jobs are
        given back), and a cancelled write is never left queued for a later batch.

        Raises:
            Exception: the batch's statement failed (every write in it gets the error).
        """
        entry = _Entry(item)
        self._queue.append(entry)
        try:
            while not entry.done:
                if entry.queued and not self._gathering and len(self._flushes) < MAX_FLUSHES:
                    if self._gather_turns:
                        await self._gather()
                    if entry.queued and len(self._flushes) < MAX_FLUSHES:
                        await self._flush()
                else:
                    await self._flushed.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                # Another task's batch took it: wait until that batch was written,
                # or was cancelled before its statement went and put it back.
                while not (entry.queued or entry.done):
                    await self._flushed.wait()
                if entry.queued:
                    self._queue.remove(entry)
                elif entry.failure is None and orphaned is not None:
                    await orphaned(entry.answer)
            raise
        if entry.failure is not None:
            raise entry.failure
        return entry.answer

    async def _gather(self) -> None:
        """Let the tasks that are ready to run queue their writes before the batch goes.

        Writes come in bursts: the attempts that a claim started end in the same
        turn of Trio's scheduler, and the scheduler, woken by their freed slots,
        claims in the next. A batch that waits these :data:`GATHER_TURNS` turns
        carries all of them; one that left at once would carry only the first.
        """
        self._gathering = True
        try:
            for _ in range(self._gather_turns):
                await trio.lowlevel.checkpoint()
        finally:
            self._gathering = False
            self._wake()

    async def _flush(self) -> None:
        flush = object()
        self._flushes.add(flush)
        batch, self._queue = self._queue, []
        for entry in batch:
            entry.queued = False
        try:
            answers = await self._run(self._make_writer([entry.item for entry in batch]))
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
        else:
            for entry, answer in zip(batch, answers, strict=True):
                entry.done, entry.answer = True, answer
        finally:
            self._flushes.discard(flush)
            self._wake()

    def _wake(self) -> None:
        """Wake the writes waiting for their turn: they look again."""
        flushed, self._flushed = self._flushed, trio.Event()
        flushed.set()


@attrs.frozen
class ClaimRequest:
    """One claim, as a batch writes it."""

    worker_id: str
    limit: int
    types: list[str] | None
    lease: float
    token: str = attrs.field(factory=lambda: uuid.uuid4().hex)

    def params(self) -> dict[str, Any]:
        """The claim statements' parameters."""
        return {
            "limit": self.limit,
            "worker_id": self.worker_id,
            "lease": self.lease,
            "types": self.types,
            "token": self.token,
        }


@attrs.frozen
class SettleRequest:
    """One settle, encoded, as a batch writes it."""

    job_id: str
    worker_id: str
    attempt: int
    status: str
    result: str | None
    error: str | None
    delay: float
    execution_time: float | None


class BatchWriters:
    """The functions that write a batch of saves, or of settles and claims, for one store.

    A batch goes in one round trip (a pipeline): its own transaction, then, in a
    second one that does not wait for the disk, the notifications it owes (see
    ``notify_many`` in ``_sql``). Every row a batch writes carries the
    batch's token, so when the connection dies under it, the retry on a fresh
    connection first asks what the first try wrote, and never applies a write
    twice nor reports one that committed as failed.

    Args:
        statements: The store's statements.
        schema: The store's schema.
        work_channel: The channel announcing claimable work.
        changed_channel: The channel announcing changed jobs.
    """

    def __init__(
        self, statements: sql.Statements, schema: str, *, work_channel: str, changed_channel: str
    ) -> None:
        self._sql = statements
        self._schema = schema
        self._work_channel = work_channel
        self._changed_channel = changed_channel

    def save_writer(self, batch: list[dict[str, Any]]) -> Callable[[Connection], list[Any]]:
        """Return the function that inserts ``batch`` and returns what each save met.

        The answer for each save is ``None`` (inserted) or the ``ValueError``
        for a duplicate id. Listening workers are told of the new work.
        """
        token = uuid.uuid4().hex
        ids = [record["id"] for record in batch]
        # Announced even if a duplicate id makes a save fail: a spurious wake-up
        # costs a worker one empty claim.
        notes = _notes([(self._work_channel, repr(min(r["delay"] for r in batch)))])
        tries = 0

        def write(conn: Connection) -> list[Any]:
            nonlocal tries
            tries += 1
            if tries == 1:
                arrays, params = pg_rows.record_columns(batch)
                with _Round(conn, explicit=True) as round_:
                    inserted = round_.execute(
                        self._sql.inserts.statement(arrays), params | {"token": token}
                    )
                    round_.commit_then(self._sql.notify_many, notes)
                return self._save_answers(conn, batch, {row[0] for row in inserted.fetchall()})
            rows = conn.execute(self._sql.saved_by_token, (ids, token)).fetchall()
            done = {row[0] for row in rows}
            todo = [record for record in batch if record["id"] not in done]
            if todo:
                arrays, params = pg_rows.record_columns(todo)
                rows = conn.execute(
                    self._sql.inserts.statement(arrays), params | {"token": token}
                ).fetchall()
                done.update(row[0] for row in rows)
            self._notify_quietly(conn, self._sql.notify_many, notes)
            return self._save_answers(conn, batch, done, retried=True)

        return write

    def _save_answers(
        self,
        conn: Connection,
        batch: list[dict[str, Any]],
        inserted: set[str],
        *,
        retried: bool = False,
    ) -> list[Any]:
        answers: list[Any] = []
        taken: set[str] = set()
        for record in batch:
            job_id = record["id"]
            ours = job_id in inserted or (
                # Inserted by the first try, and claimed since (new token)?
                retried and self._is_same_job(conn, record)
            )
            if ours and job_id not in taken:
                taken.add(job_id)
                answers.append(None)
            else:
                answers.append(ValueError(f"a job with id {job_id!r} exists already"))
        return answers

    def _is_same_job(self, conn: Connection, params: Mapping[str, Any]) -> bool:
        row = conn.execute(
            f'SELECT type, payload, created_at FROM "{self._schema}".jobs WHERE id = %s',
            (params["id"],),
        ).fetchone()
        return row is not None and row == (params["type"], params["payload"], params["created_at"])

    def _notify_quietly(self, conn: Connection, statement: str, params: Any) -> None:
        """Send a batch's notifications after a retry, in a transaction of their own.

        A lost notification costs only latency (pollers find the work), so a
        failure here is logged, never raised: the change it announces is committed.
        """
        import psycopg

        try:
            conn.execute(statement, params)
        except psycopg.OperationalError as exc:
            logger.warning("could not send notifications (%s); polling covers them", exc)

    def cycle_writer(
        self, batch: list[SettleRequest | ClaimRequest]
    ) -> Callable[[Connection], list[Any]]:
        """Return the function that writes a worker's settles and claims in one transaction.

        A busy worker's settles and its next claim meet here: the attempts that
        end together free their slots together, and the claim that refills them
        rides in the same round trip and the same commit. Settles are answered
        with whether they applied, claims with the jobs they took. A claim with
        no settle beside it commits without waiting for the disk.
        """
        token = uuid.uuid4().hex
        settles = [(index, r) for index, r in enumerate(batch) if isinstance(r, SettleRequest)]
        claims = [(index, r) for index, r in enumerate(batch) if isinstance(r, ClaimRequest)]
        durable = bool(settles)
        notes = self._settle_notes([r for _, r in settles])
        tries = 0

        def write(conn: Connection) -> list[Any]:
            nonlocal tries
            tries += 1
            if tries == 1 and len(batch) == 1 and claims:
                # An idle worker's claim: one statement needs no pipeline.
                taken = [self._send_claim(conn, claims[0][1], durable=False).fetchall()]
                applied: set[int] = set()
            elif tries == 1:
                with _Round(conn, explicit=durable) as round_:
                    settled = self._send_settles(round_, [r for _, r in settles], token)
                    claimed = [self._send_claim(round_, r, durable=durable) for _, r in claims]
                    if settles:
                        round_.commit_then(self._sql.notify_many, notes)
                applied = _applied(settled.fetchall()) if settled else set()
                taken = [cursor.fetchall() for cursor in claimed]
            else:
                with conn.transaction():
                    applied = self._retry_settles(conn, [r for _, r in settles], token)
                    taken = [self._retry_claim(conn, r, durable=durable) for _, r in claims]
            answers: list[Any] = [None] * len(batch)
            for position, (index, _) in enumerate(settles):
                answers[index] = position in applied
            for (index, _), rows in zip(claims, taken, strict=True):
                answers[index] = _jobs(rows)
            if tries > 1 and settles:
                self._notify_quietly(conn, self._sql.notify_many, notes)
            return answers

        return write

    def claim_now(self, request: ClaimRequest, conn: Connection) -> list[Job[Any]]:
        """Run one claim by itself on ``conn`` (in a thread); the jobs it took, in order."""
        return _jobs(self._send_claim(conn, request, durable=False).fetchall())

    def claimed_by(self, request: ClaimRequest, conn: Connection) -> list[Job[Any]]:
        """The jobs ``request`` claimed, if it committed (after its answer was lost)."""
        return _jobs(conn.execute(self._sql.claimed_by_token, request.params()).fetchall())

    def _settle_notes(self, settles: list[SettleRequest]) -> tuple[str]:
        """The notifications a batch of settles owes: its jobs changed; some wait again.

        Sent for every settle in the batch, applied or not: one that a fence
        refused wakes its watchers for nothing, and they look again.
        """
        pairs = [
            (self._changed_channel, payload)
            for payload in pg_rows.id_payloads(r.job_id for r in settles)
        ]
        delays = [r.delay for r in settles if r.status in _WAITING]
        if delays:
            pairs.append((self._work_channel, repr(min(delays))))
        return _notes(pairs)

    def _send_settles(
        self, conn: Connection | _Round, settles: list[SettleRequest], token: str
    ) -> Cursor | None:
        if not settles:
            return None
        records = json.dumps([_settle_record(request) for request in settles])
        ids = [request.job_id for request in settles]
        return conn.execute(self._sql.settle, {"batch": records, "ids": ids, "token": token})

    def _retry_settles(
        self, conn: Connection, settles: list[SettleRequest], token: str
    ) -> set[int]:
        """Write the settles the first try did not; return the positions of all applied."""
        if not settles:
            return set()
        rows = conn.execute(
            self._sql.settled_by_token, ([r.job_id for r in settles], token)
        ).fetchall()
        written = {row[0] for row in rows}
        applied: set[int] = set()
        for position, request in enumerate(settles):
            if request.job_id in written:
                written.discard(request.job_id)  # a duplicate applied once
                applied.add(position)
        todo = [position for position in range(len(settles)) if position not in applied]
        cursor = self._send_settles(conn, [settles[position] for position in todo], token)
        if cursor is not None:
            applied.update(todo[position] for position in _applied(cursor.fetchall()))
        return applied

    def _send_claim(
        self, conn: Connection | _Round, request: ClaimRequest, *, durable: bool
    ) -> Cursor:
        statement = self._sql.claim_for(
            request.limit, typed=request.types is not None, durable=durable
        )
        return conn.execute(statement, request.params())

    def _retry_claim(
        self, conn: Connection, request: ClaimRequest, *, durable: bool
    ) -> list[tuple[Any, ...]]:
        # The connection died under the first try: it may have claimed.
        rows = conn.execute(self._sql.claimed_by_token, request.params()).fetchall()
        return rows or self._send_claim(conn, request, durable=durable).fetchall()


class _Round:
    """One round trip: statements pipelined in one transaction, then its notifications.

    Use as a context manager around :meth:`execute` calls; leaving it sends them
    all and waits for the answers. :meth:`commit_then` ends the transaction
    explicitly and queues one more statement, which runs in a transaction of its
    own: should only that one fail (after the commit), the failure is logged,
    not raised, since what it would announce is committed.
    """

    def __init__(self, conn: Connection, *, explicit: bool) -> None:
        self._conn = conn
        self._explicit = explicit
        self._pipeline: AbstractContextManager[Any] | None = None
        self._committed: Cursor | None = None

    def __enter__(self) -> _Round:
        self._pipeline = self._conn.pipeline()
        self._pipeline.__enter__()
        if self._explicit:
            # Without BEGIN, everything up to the pipeline's end is one implicit
            # transaction, and commit_then could not end it early.
            self._conn.execute("BEGIN")
        return self

    def execute(self, statement: str, params: Any) -> Cursor:
        """Queue ``statement`` in the round's transaction."""
        return self._conn.execute(statement, params)

    def commit_then(self, statement: str, params: Any) -> None:
        """Commit the round's statements, then queue ``statement`` on its own."""
        assert self._explicit, "commit_then needs a round made with explicit=True"
        self._committed = self._conn.execute("COMMIT")
        self._conn.execute(statement, params)

    def __exit__(self, *exc_info: Any) -> None:
        import psycopg

        assert self._pipeline is not None
        try:
            self._pipeline.__exit__(*exc_info)
        except psycopg.Error as exc:
            committed = self._committed
            if exc_info[0] is not None or committed is None or committed.statusmessage != "COMMIT":
                raise
            logger.warning("could not send notifications (%s); polling covers them", exc)


def _notes(pairs: list[tuple[str, str]]) -> tuple[str]:
    """The parameters of ``notify_many`` for these (channel, payload) pairs."""
    return (json.dumps(pairs),)


def _applied(rows: list[tuple[Any, ...]]) -> set[int]:
    """The positions of the applied settles in their batch (the statement's ``idx``)."""
    return {int(idx) - 1 for idx, _status in rows}


def _jobs(rows: list[tuple[Any, ...]]) -> list[Job[Any]]:
    """The jobs of a claim's rows, in claim order."""
    rows.sort(key=_claim_order)
    return [pg_rows.row_to_job(row) for row in rows]


def _claim_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # RETURNING comes in no particular order: priority, then ready_at, then seq.
    return (-row[4], row[-2], row[-1])


def _settle_record(request: SettleRequest) -> dict[str, Any]:
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
