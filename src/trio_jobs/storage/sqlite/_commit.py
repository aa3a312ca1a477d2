"""The group commit of :class:`SQLiteStorage`: concurrent writes share one transaction.

Writes from many tasks queue up, and whichever caller finds no flush in progress
runs the whole queue in one thread call and one ``BEGIN IMMEDIATE`` transaction,
each caller getting its own result. As with :func:`trio.to_thread.run_sync`, a
write can be cancelled until its transaction starts, and from then on its caller
waits for the result.

A write may come with a *probe*, a read that says whether the write has anything
to do (a claim: is any job ready?). When every write of a batch has one and no
probe finds anything, the batch is answered without a transaction: an idle
worker checking for work never takes the database's write lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

import trio

T = TypeVar("T")

Op = Callable[[sqlite3.Connection, float], T]
#: A read run before the transaction: False when the write would change nothing.
Probe = Callable[[sqlite3.Connection, float], bool]


class _Entry(Generic[T]):
    """One queued write of the group commit, and what became of it."""

    __slots__ = ("done", "empty", "error", "flush_turn", "op", "probe", "taken", "task", "value")

    def __init__(self, op: Op[T], probe: Probe | None, empty: T | None) -> None:
        self.op = op
        self.probe = probe
        self.empty = empty  # the value when the probe found nothing to do
        self.value: T | None = None
        self.error: BaseException | None = None
        # The task parked waiting for this write (None: the flusher's own write).
        self.task: trio.lowlevel.Task | None = None
        self.taken = False  # a flusher has it: it can no longer be cancelled
        self.done = False
        self.flush_turn = False  # its task was woken to flush next


class GroupCommit:
    """The queue of writes waiting for a transaction, and the one flusher running it.

    Args:
        lock: The lock whose holder alone uses the connection (reads take it too).
        limiter: The limiter of the connection's worker threads.
        connection: Returns the open connection, or raises when there is none.
        translate: Turns a driver error into the error the store raises.
        after_commit: Called in the worker thread after each batch, with whether
            it committed (the store sends its wake-ups there).
    """

    def __init__(
        self,
        *,
        lock: trio.Lock,
        limiter: trio.CapacityLimiter,
        connection: Callable[[], sqlite3.Connection],
        translate: Callable[[sqlite3.Error], Exception],
        after_commit: Callable[[bool], None] | None = None,
    ) -> None:
        self._lock = lock
        self._limiter = limiter
        self._connection = connection
        self._translate = translate
        self._after_commit = after_commit
        self._queue: list[_Entry[Any]] = []
        self._flushing = False

    async def write(self, op: Op[T], *, probe: Probe | None = None, empty: T | None = None) -> T:
        """Run ``op`` in a write transaction shared with the writes queued meanwhile.

        The caller whose write finds no flush in progress becomes the flusher: it
        takes the whole queue to a worker thread, runs it in one transaction, and
        wakes the other callers with their own results. Callers queued meanwhile
        park; when the flusher is done, the first of them is woken to flush next.
        Like :func:`trio.to_thread.run_sync`, a write is cancellable until a
        flusher takes it, and after that its caller waits for its result.

        With a ``probe``, the write may be answered with ``empty`` instead, without a
        transaction (see the module).
        """
        entry: _Entry[T] = _Entry(op, probe, empty)
        self._queue.append(entry)
        if self._flushing:
            entry.task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                if entry.taken:
                    return trio.lowlevel.Abort.FAILED
                self._queue.remove(entry)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            if not entry.flush_turn:
                return self._result(entry)
        self._flushing = True
        try:
            while not entry.done:
                await self._flush()
        except BaseException:
            if not entry.taken:
                self._queue.remove(entry)
            raise
        finally:
            self._flushing = False
            if self._queue:
                # Hand the flusher's role to the first parked writer.
                self._flushing = True
                successor = self._queue[0]
                successor.flush_turn = True
                assert successor.task is not None
                trio.lowlevel.reschedule(successor.task)
        return self._result(entry)

    async def _flush(self) -> None:
        """Run everything queued in one transaction and deliver the results."""
        async with self._lock:
            # One scheduling round more before taking the queue: the tasks woken
            # with the flusher's (a round of attempts ending, and the scheduler
            # whose slots they freed) queue their writes first. Trio runs a round
            # in random order, so without it the claim missed the settles' batch
            # about half the time: 1,449 transactions per 10,000 jobs instead of
            # 1,005, one per round of settles and the claim after them.
            await trio.lowlevel.cancel_shielded_checkpoint()
            conn = self._connection()
            batch, self._queue = self._queue, []
            for entry in batch:
                entry.taken = True
            try:
                await trio.to_thread.run_sync(
                    _run_batch, conn, batch, self._after_commit, limiter=self._limiter
                )
            except BaseException:
                # The thread never started (cancelled at its checkpoint): the
                # writes were not made and are cancellable again.
                for entry in batch:
                    entry.taken = False
                self._queue[:0] = batch
                raise
        me = trio.lowlevel.current_task()
        for entry in batch:
            entry.done = True
            if entry.task is not None and entry.task is not me:
                trio.lowlevel.reschedule(entry.task)

    def _result(self, entry: _Entry[T]) -> T:
        if entry.error is not None:
            if isinstance(entry.error, sqlite3.Error):
                raise self._translate(entry.error) from entry.error
            raise entry.error
        return cast(T, entry.value)


def _run_batch(
    conn: sqlite3.Connection,
    batch: list[_Entry[Any]],
    after_commit: Callable[[bool], None] | None = None,
) -> None:
    """Run each entry's op in one transaction, recording each one's value or error.

    An op's own error (a duplicate id, a bad value) fails that op alone: SQLite has
    already undone its statement. Any other database error fails the whole batch.
    When every entry has a probe and none finds work, no transaction runs.
    """
    committed = False
    try:
        if _nothing_to_do(conn, batch):
            for entry in batch:
                entry.value = entry.empty
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            for entry in batch:
                try:
                    entry.value = entry.op(conn, now)
                except sqlite3.IntegrityError as exc:
                    entry.error = exc
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    entry.error = exc
            conn.execute("COMMIT")
            committed = True
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    except Exception as exc:
        for entry in batch:
            entry.value = None
            entry.error = exc
    finally:
        if after_commit is not None:
            after_commit(committed)


def _nothing_to_do(conn: sqlite3.Connection, batch: list[_Entry[Any]]) -> bool:
    """Whether every entry has a probe and none finds anything (reads, no write lock)."""
    if not all(entry.probe is not None for entry in batch):
        return False
    now = time.time()
    # Each probe runs to the end (no short circuit): a probe may note what it
    # learned (a claim probe, the next delayed job's time).
    found = [entry.probe(conn, now) for entry in batch if entry.probe is not None]
    return not any(found)
