"""The waiting half of :class:`SQLiteStorage`: for work, cancel requests and changes.

A store object wakes its own waiters at once, through local wake-ups: the cancel
scopes of the tasks sleeping in :meth:`~Waiting.wait_for_work` or
:meth:`~Waiting.wait_for_cancel_request` (cancelled to wake them), the due times
of delays it wrote, and an event per job watched by
:meth:`~Waiting.wait_for_change`. The store's writes call ``_changed`` and
``_work_at`` once they commit.

Other processes' stores wake it through the Unix datagram sockets of
:mod:`._wake`: a waiting store binds its socket for a kind (:data:`~._wake.WORK`,
:data:`~._wake.CANCEL`) on first use, and one task at a time sleeps in the kernel
reading it (``wait_readable``); the others wait for that reader to wake them, or
for their own deadline. A store that cannot bind a socket only polls, at the
caller's ``timeout``.

:class:`Waiting` is a base of :class:`SQLiteStorage`, whose constructor sets the
state declared here.
"""

from __future__ import annotations

import heapq
import logging
import socket
import sqlite3
import time

import trio

from .._base import pop_due
from ._wake import CANCEL, WORK, WakeChannel

_log = logging.getLogger("trio_jobs.storage.sqlite")


class Waiting:
    """Waiting for work, cancel requests and changes (a base of :class:`SQLiteStorage`)."""

    _conn: sqlite3.Connection | None
    #: Wake-ups between processes (None: an in-memory database, nobody to wake).
    _wake: WakeChannel | None
    #: The cancel scopes of the tasks waiting, cancelled to wake them.
    _work_waiters: set[trio.CancelScope]
    _cancel_waiters: set[trio.CancelScope]
    #: wait_for_work returns at once: this store object made work claimable.
    _work_flag: bool
    #: Wall-clock times at which delays this store object wrote end (a heap).
    _due: list[float]
    _changes: dict[str, trio.Event]
    #: Kinds of wake-up socket some task is reading now (one reader per socket).
    _reading: set[str]
    #: Kinds whose socket could not be made here: this store only polls for them.
    _unreachable: set[str]
    #: The work socket was bound after the last claim began (see the store).
    _fresh_listener: bool
    #: When the next delayed job becomes due, as the last short claim or probe saw it.
    _next_due: float | None

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable, or after ``timeout`` seconds.

        Wakes at once on what this store object did (a save, a retry or release, a
        requeue or rescue), at the end of a delay it wrote or that the last claim
        saw in the table, and on a datagram from another store whose commit made
        work claimable (on a Unix socket in the directory ``<path>-wake``). Between
        those it sleeps in the kernel, so ``timeout`` (the runner's
        ``poll_interval``) is only the backstop: for writes by other programs, or a
        store that cannot reach this one's socket.
        """
        sock = self._listener(WORK)
        fired = self._pop_due()
        now = time.time()
        if self._next_due is not None and self._next_due <= now:
            # The delayed job the last claim saw is due: return once (the next
            # claim looks again and notes the next one).
            self._next_due = None
            fired = True
        if (
            fired
            or self._work_flag
            or self._fresh_listener
            or (self._wake is not None and self._wake.receive(WORK))
        ):
            self._work_flag = self._fresh_listener = False
            await trio.lowlevel.checkpoint()
            return
        dues = [*self._due[:1], *([self._next_due] if self._next_due is not None else [])]
        wait = min(timeout, max(0.0, min(dues) - now)) if dues else timeout
        await self._sleep(WORK, sock, trio.current_time() + wait, self._work_waiters)
        self._work_flag = False
        self._pop_due()

    async def wait_for_cancel_request(self, timeout: float) -> None:
        """Return when a running job was flagged for cancellation, or after ``timeout``.

        An optional extra of the protocol: wakes at once when this store object
        flags a job, and on a datagram from another process's store that did, so
        a runner relays a cancellation to its attempt without waiting for its next
        heartbeat.
        """
        sock = self._listener(CANCEL)
        if self._wake is not None and self._wake.receive(CANCEL):
            await trio.lowlevel.checkpoint()
            return
        await self._sleep(CANCEL, sock, trio.current_time() + timeout, self._cancel_waiters)

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

    # -- wake-up sockets --------------------------------------------------------------

    def _listener(self, kind: str) -> socket.socket | None:
        """This store's wake-up socket for ``kind``, bound on first use (None: poll only)."""
        wake = self._wake
        if wake is None or self._conn is None or kind in self._unreachable:
            return None
        sock = wake.listener(kind)
        if sock is None:
            try:
                sock = wake.listen(kind)
            except OSError as exc:
                self._unreachable.add(kind)
                _log.warning(
                    "%r cannot listen for wake-ups in %s (%s); polling instead",
                    self,
                    wake.directory,
                    exc,
                )
                return None
            if kind == WORK:
                self._fresh_listener = True
        return sock

    def _close_listeners(self) -> None:
        if self._wake is None:
            return
        for sock in self._wake.close_listeners():
            trio.lowlevel.notify_closing(sock)
            sock.close()

    async def _sleep(
        self,
        kind: str,
        sock: socket.socket | None,
        deadline: float,
        waiters: set[trio.CancelScope],
    ) -> None:
        """Sleep until ``deadline``, a local wake-up (``waiters``), or a datagram on ``sock``.

        One task at a time reads a socket; another task waiting meanwhile is woken
        by that reader (through ``waiters``), or by its own deadline.
        """
        scope = trio.CancelScope(deadline=deadline)
        waiters.add(scope)
        try:
            with scope:
                if sock is None or kind in self._reading:
                    await trio.sleep_forever()
                self._reading.add(kind)
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    return  # the store is closing
                finally:
                    self._reading.discard(kind)
                if self._wake is not None and self._wake.receive(kind):
                    wake_all(waiters)
        finally:
            waiters.discard(scope)

    # -- local wake-ups -----------------------------------------------------------------

    def _changed(self, job_id: str) -> None:
        event = self._changes.pop(job_id, None)
        if event is not None:
            event.set()

    def _work_at(self, when: float | None) -> None:
        """Wake wait_for_work now (``None``) or remember to at wall-clock ``when``."""
        if when is None:
            self._work_flag = True
        else:
            heapq.heappush(self._due, when)
        # A sleeping waiter returns (and, for a due time, sleeps again until then).
        wake_all(self._work_waiters)

    def _pop_due(self) -> bool:
        return pop_due(self._due, time.time())


def wake_all(waiters: set[trio.CancelScope]) -> None:
    """Wake the tasks waiting in ``waiters`` (cancel their scopes)."""
    for scope in waiters:
        scope.cancel()
