r"""How a :class:`PostgresStorage` hears of work: the LISTEN thread and the wake-ups.

A dedicated connection outside the pool ``LISTEN``\ s on the store's channels in a
thread of its own (:class:`Listener`), reconnecting with exponential backoff when
the connection drops. The thread sleeps in ``select`` on the connection's socket
and on a socket pair of its own (rung to stop it or to make it listen on one more
channel): an idle store costs no CPU and never wakes Trio. Each notification that
can wake someone is handed to the Trio thread, where :class:`Wakeups` sets the
events that ``wait_for_work``, ``wait_for_cancel_request`` and ``wait_for_change``
wait on; the store's own writes set them directly, without waiting for their
notification to come back.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import selectors
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio

from .._base import pop_due

if TYPE_CHECKING:
    from ..._records import Job
    from ._connect import Connection

logger = logging.getLogger("trio_jobs.postgres")

_RECONNECT_MIN: Final = 0.1
_RECONNECT_MAX: Final = 5.0


#: The key under which waiters for a change to any job wait (no job id has it).
_ANY_JOB: Final = "\0any"


class Wakeups:
    """The events a store's waiters wait on, and the notifications that set them.

    Used from the Trio thread only. A flag remembers a wake-up that came while
    nobody waited, so the next wait returns at once.

    Args:
        work_channel: The channel announcing claimable work (payload: its delay).
        cancel_channel: The channel announcing a cancel request for a running job.
        changed_channel: The channel announcing changed jobs (payload: their ids).
    """

    def __init__(self, *, work_channel: str, cancel_channel: str, changed_channel: str) -> None:
        self._work_channel = work_channel
        self._cancel_channel = cancel_channel
        self._changed_channel = changed_channel
        self._work_flag = False
        self._work_event = trio.Event()
        self._due: list[float] = []  # Trio times at which delayed jobs become ready
        self._cancel_flag = False
        self._cancel_event = trio.Event()
        self._change_events: dict[str, trio.Event] = {}
        #: Whether the LISTEN connection hears the changed channel yet.
        self._hearing_changes = False
        #: Asks the LISTEN thread to start hearing it (set by the store).
        self.request_changes: Callable[[], None] = lambda: None

    async def wait_for_work(self, timeout: float) -> None:
        """Return on a work wake-up, when a scheduled delay ends, or after ``timeout``."""
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
        """Return on a cancel wake-up (now or since the last wait), or after ``timeout``."""
        await trio.lowlevel.checkpoint()
        if not self._cancel_flag:
            with trio.move_on_after(max(timeout, 0.0)):
                await self._cancel_event.wait()
        self._cancel_flag = False

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` is woken as changed, or after ``timeout``.

        The first wait in a process also returns as soon as the LISTEN
        connection hears the changed channel (see :meth:`on_hearing_changes`):
        a change made before then was not heard, so the caller looks again.
        """
        if not self._hearing_changes:
            self.request_changes()
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

    def wake_work(self) -> None:
        self._work_flag = True
        self._work_event.set()
        self._work_event = trio.Event()

    def schedule_work(self, delay: float) -> None:
        if delay <= 0:
            self.wake_work()
            return
        heapq.heappush(self._due, trio.current_time() + delay)
        # Waiters recompute their deadline; this is not a wake-up (no flag).
        self._work_event.set()
        self._work_event = trio.Event()

    def _pop_due(self) -> bool:
        return pop_due(self._due, trio.current_time())

    def wake_cancel(self) -> None:
        self._cancel_flag = True
        self._cancel_event.set()
        self._cancel_event = trio.Event()

    async def wait_for_any_change(self, timeout: float) -> None:
        """Return when any job is woken as changed, or after ``timeout``."""
        await self.wait_for_change(_ANY_JOB, timeout)

    def wake_change(self, job_id: str) -> None:
        event = self._change_events.pop(job_id, None)
        if event is not None:
            event.set()
        anyone = self._change_events.pop(_ANY_JOB, None)
        if anyone is not None:
            anyone.set()

    def wake_all_changes(self) -> None:
        events, self._change_events = self._change_events, {}
        for event in events.values():
            event.set()

    def wants(self, channel: str) -> bool:
        """Whether a notification on ``channel`` can wake anyone (asked from the LISTEN thread).

        Every settle announces its job on the changed channel, and every worker
        hears every announcement; most have nobody waiting for any job. Those are
        dropped in the LISTEN thread, without waking Trio. (A waiter that comes a
        moment later would not have seen that change anyway; its poll covers it.)
        """
        return channel != self._changed_channel or bool(self._change_events)

    def on_notify(self, channel: str, payload: str) -> None:
        """Handle one notification (in the Trio thread, from the listener)."""
        if channel == self._work_channel:
            try:
                delay = float(payload or 0)
            except ValueError:
                delay = 0.0
            self.schedule_work(delay if math.isfinite(delay) else 0.0)
        elif channel == self._cancel_channel:
            self.wake_cancel()
        elif channel == self._changed_channel:
            for job_id in payload.split("\n"):
                if job_id == "*":
                    self.wake_all_changes()
                    break
                self.wake_change(job_id)

    def on_hearing_changes(self, hearing: bool) -> None:
        """The LISTEN connection started (or, when it dropped, stopped) hearing changes."""
        self._hearing_changes = hearing
        if hearing:
            # Waiters that began before could have missed a change: they look again.
            self.wake_all_changes()

    def on_reconnect(self) -> None:
        # Notifications sent while the connection was down are lost: wake everyone.
        self.wake_work()
        self.wake_cancel()
        self.wake_all_changes()


class ParkedClaim:
    """A claim an idle worker leaves with the LISTEN thread, run when work is announced.

    The thread runs it on its own connection the moment a notification of
    ready work arrives, instead of waking Trio to send a claim from another
    thread: a trickled job starts a thread hand-off and a round trip sooner.
    The jobs (or ``None`` when the claim failed) are delivered in the Trio
    thread, before the notification itself wakes the waiter.

    Args:
        run: Claims on the given connection; returns the jobs (in a thread).
    """

    def __init__(self, run: Callable[[Connection], list[Job[Any]]]) -> None:
        self.run = run
        self.jobs: list[Job[Any]] | None = None
        self.done = trio.Event()

    def deliver(self, jobs: list[Job[Any]] | None) -> None:
        """Hand over the claim's outcome (in the Trio thread)."""
        self.jobs = jobs
        self.done.set()


class Listener:
    """The LISTEN connection and the thread that waits on it.

    The thread blocks in ``select`` on the connection's socket and on the read end
    of a socket pair: it wakes only when a notification arrives, when the
    connection drops, or when the pair is rung (:meth:`stop`, :meth:`hear_changes`,
    or the end of the Trio run, which a system task watches for). When the
    connection drops it reconnects with exponential backoff, logging both.
    Notifications reach Trio through ``TrioToken.run_sync_soon``: the thread never
    waits for the Trio loop, and calls into it only for a notification that can
    wake someone.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Connection],
        token: trio.lowlevel.TrioToken,
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None],
        wants: Callable[[str], bool] = lambda channel: True,
        listen_changed: str | None = None,
        on_hearing_changes: Callable[[bool], None] = lambda hearing: None,
        work_channel: str | None = None,
    ) -> None:
        self._connect = connect
        self._token = token
        self._on_notify = on_notify
        self._wants = wants
        self._listen_changed = listen_changed
        self._on_hearing_changes = on_hearing_changes
        self._want_changes = threading.Event()
        self._work_channel = work_channel
        self._parked: ParkedClaim | None = None
        self._parked_lock = threading.Lock()
        self._on_reconnect = on_reconnect
        self._stopping = threading.Event()
        self._stopped = trio.Event()
        # Rung (one byte) to wake the thread from select; both ends are closed by
        # the thread when it ends (a socket object refuses to send once closed).
        self._bell, self._bell_rope = socket.socketpair()
        self._bell.setblocking(False)
        self._bell_rope.setblocking(False)

    def start(self, conn: Connection) -> None:
        # A thread of its own, not trio.to_thread: it lives as long as the store and
        # must not hold one of the limiter's tokens, nor need a task to await it.
        trio.lowlevel.start_thread_soon(
            partial(self._run, conn), self._finished, name="trio_jobs postgres LISTEN"
        )
        # Should the run end without close(), the thread must still stop: this
        # system task is cancelled then, and rings the bell.
        trio.lowlevel.spawn_system_task(self._watch_run, name="trio_jobs postgres LISTEN watch")

    async def _watch_run(self) -> None:
        try:
            await self._stopped.wait()
        finally:
            self._stopping.set()
            self._ring()

    def _ring(self) -> None:
        # OSError: closed (the thread ended), or already full of rings (it will wake).
        with contextlib.suppress(OSError):
            self._bell_rope.send(b"\0")

    def hear_changes(self) -> None:
        """Start hearing the changed channel too (the thread is woken to do it)."""
        self._want_changes.set()
        self._ring()

    def park(self, claim: ParkedClaim) -> None:
        """Leave ``claim`` to run in the thread as soon as work is announced."""
        with self._parked_lock:
            self._parked = claim

    def unpark(self, claim: ParkedClaim) -> bool:
        """Take ``claim`` back; False when the thread has taken it (it will deliver)."""
        with self._parked_lock:
            if self._parked is claim:
                self._parked = None
                return True
            return False

    def _take_parked(self, payload: str) -> ParkedClaim | None:
        try:
            ready_now = float(payload or 0) <= 0
        except ValueError:
            ready_now = True
        if not ready_now:
            return None  # announced for later: the waiter's timer handles it
        with self._parked_lock:
            claim, self._parked = self._parked, None
        return claim

    def _run_parked(self, conn: Connection, claim: ParkedClaim, channel: str, payload: str) -> bool:
        """Run a parked claim; hand Trio its jobs (None if it failed) and the notification.

        Returns False if the Trio run has ended.
        """
        import psycopg

        jobs: list[Job[Any]] | None = None
        delivered = False
        try:
            jobs = claim.run(conn)
        except psycopg.Error as exc:
            logger.warning("claiming on a work notification failed (%s)", str(exc).strip())
            if isinstance(exc, psycopg.OperationalError):
                raise  # the connection: reconnect
        finally:
            # Always delivered, even when the thread dies here: a waiter waits for it.
            # One call into Trio for both: the jobs first, then the wake-up.
            delivered = self._post(self._deliver, claim, jobs, channel, payload)
        return delivered

    def _deliver(
        self, claim: ParkedClaim, jobs: list[Job[Any]] | None, channel: str, payload: str
    ) -> None:
        claim.deliver(jobs)
        self._on_notify(channel, payload)

    async def stop(self) -> None:
        self._stopping.set()
        self._ring()
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
        self._bell.close()
        self._bell_rope.close()
        self._post(self._stopped.set)

    def _handle(self, conn: Connection, notes: list[Any]) -> bool:
        """Pass notifications on, in order; run the parked claim on the first of work.

        Returns False if the Trio run has ended.
        """
        for note in notes:
            if not self._wants(note.channel):
                continue
            if note.channel == self._work_channel:
                parked = self._take_parked(note.payload)
                if parked is not None:
                    if not self._run_parked(conn, parked, note.channel, note.payload):
                        return False
                    continue
            if not self._post(self._on_notify, note.channel, note.payload):
                return False
        return True

    def _run(self, conn: Connection | None) -> None:
        import psycopg

        backoff = _RECONNECT_MIN
        hearing_changes = False
        selector = selectors.DefaultSelector()
        selector.register(self._bell, selectors.EVENT_READ)
        watched: int | None = None  # the connection's socket, while registered
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
                    if watched is None:
                        watched = conn.fileno()
                        selector.register(watched, selectors.EVENT_READ)
                    if self._want_changes.is_set() and not hearing_changes:
                        if self._listen_changed is not None:
                            conn.execute(self._listen_changed)
                        hearing_changes = True
                        if not self._post(self._on_hearing_changes, True):
                            return
                    # What arrived while a statement ran (psycopg keeps it aside),
                    # then what the socket has; without waiting.
                    notes = list(conn.notifies(timeout=0))
                    if notes:
                        if not self._handle(conn, notes):
                            return
                        continue  # a parked claim may have left more aside
                    selector.select()
                    _drain(self._bell)
                except psycopg.Error as exc:
                    logger.warning(
                        "LISTEN connection to PostgreSQL lost (%s); reconnecting; "
                        "polling covers the gap",
                        str(exc).strip(),
                    )
                    if watched is not None:
                        selector.unregister(watched)
                        watched = None
                    conn.close()
                    conn = None
                    if hearing_changes:
                        hearing_changes = False
                        if not self._post(self._on_hearing_changes, False):
                            return
        finally:
            selector.close()
            if conn is not None:
                conn.close()


def _drain(bell: socket.socket) -> None:
    """Empty the bell's socket of rings (non-blocking)."""
    try:
        while bell.recv(64):
            pass
    except (BlockingIOError, InterruptedError):
        pass
