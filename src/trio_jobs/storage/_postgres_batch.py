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
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._records import JobStatus
from . import _postgres_sql as sql

if TYPE_CHECKING:
    from ._postgres_connect import Connection

logger = logging.getLogger("trio_jobs.postgres")

# Batches of one kind written at once. One batches best: writes arriving while a
# batch is written make the next one. (Two or three measured no faster, and
# cost more client CPU per job.)
MAX_FLUSHES: Final = 1
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
                if entry.queued and len(self._flushes) < MAX_FLUSHES:
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
    """The statements that write a batch of saves or of settles, for one store.

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

    def save_writer(
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

    def settle_writer(
        self, batch: list[SettleRequest], answer: Callable[[list[Any]], None]
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
