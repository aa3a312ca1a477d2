"""Lifecycle events: synchronous callbacks (the seed's ``on``) and subscriber channels."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._records import Job, RunnerEvent

#: Every event name, with the positional arguments its callbacks receive.
EVENT_SIGNATURES: dict[str, tuple[str, ...]] = {
    "job:submitted": ("job",),
    "job:started": ("job",),
    "job:progress": ("job",),
    "job:completed": ("job", "result"),
    "job:failed": ("job", "error"),
    "job:retrying": ("job", "attempt", "delay"),
    "job:cancelled": ("job",),
    "job:timeout": ("job",),
    "runner:started": (),
    "runner:stopped": (),
    "runner:error": ("error",),
}

Callback = Callable[..., object]

# Where each event's arguments sit in ``emit``'s (job, result, error, attempt, delay).
_POSITIONS: dict[str, tuple[int, ...]] = {
    event: tuple(("job", "result", "error", "attempt", "delay").index(name) for name in names)
    for event, names in EVENT_SIGNATURES.items()
}


def check_event_name(event: str) -> None:
    """Raise ``ValueError`` unless ``event`` is a known event name."""
    if event not in EVENT_SIGNATURES:
        raise ValueError(f"unknown event {event!r}; expected one of {sorted(EVENT_SIGNATURES)}")


class EventHub:
    """Delivers events to callbacks and subscriber channels.

    ``emit`` never blocks and raises only what a callback raised that is not an
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``): a callback's ``Exception``
    is logged and sent as ``runner:error``, and a subscriber whose bounded buffer is
    full misses that event.
    """

    __slots__ = ("_callbacks", "_closed", "_logger", "_subscribers", "active")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._callbacks: dict[str, list[Callback]] = {name: [] for name in EVENT_SIGNATURES}
        self._subscribers: list[trio.MemorySendChannel[RunnerEvent]] = []
        self._closed = False
        #: True while anyone listens: lets the hot path skip building snapshots.
        self.active = False

    def wants(self, event: str) -> bool:
        """Return whether emitting ``event`` would reach anyone."""
        return bool(self._subscribers) or bool(self._callbacks[event])

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Register ``callback`` for ``event``; return a function that unregisters it."""
        check_event_name(event)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._callbacks[event].append(callback)
        self._refresh()
        return lambda: self.off(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        """Unregister ``callback`` from ``event``; unknown callbacks are ignored."""
        check_event_name(event)
        callbacks = self._callbacks[event]
        if callback in callbacks:
            callbacks.remove(callback)
        self._refresh()

    @asynccontextmanager
    async def subscribe(
        self, max_buffer_size: float = math.inf
    ) -> AsyncIterator[trio.MemoryReceiveChannel[RunnerEvent]]:
        """Yield a channel receiving every event from now until the runner stops."""
        send, receive = trio.open_memory_channel[RunnerEvent](max_buffer_size)
        if self._closed:
            send.close()
        else:
            self._subscribers.append(send)
            self._refresh()
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
                self._refresh()
            send.close()

    def emit(
        self,
        event: str,
        job: Job[Any] | None = None,
        *,
        result: Any = None,
        error: BaseException | None = None,
        attempt: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Deliver one event to its callbacks and to every subscriber."""
        callbacks = self._callbacks[event]
        if callbacks:
            values = (job, result, error, attempt, delay)
            args = [values[i] for i in _POSITIONS[event]]
            for callback in list(callbacks):
                self._call(event, callback, args)
        if self._subscribers:
            record = RunnerEvent(event, job, result, error, attempt, delay)
            for send in self._subscribers:
                # A slow or gone reader misses events; the runner never waits for it.
                with contextlib.suppress(
                    trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    send.send_nowait(record)

    def close(self) -> None:
        """End every subscriber's channel; later subscribers get a closed channel."""
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
        self._refresh()

    def _call(self, event: str, callback: Callback, args: list[Any]) -> None:
        try:
            outcome = callback(*args)
        except Exception as exc:
            self._logger.exception("callback %r for %r raised; ignored", callback, event)
            if event != "runner:error":  # (one that fails on runner:error is only logged)
                self.emit("runner:error", error=exc)
            return
        if outcome is not None and inspect.isawaitable(outcome):
            if inspect.iscoroutine(outcome):
                outcome.close()
            self._logger.error(
                "callback %r for %r returned an awaitable; event callbacks are called "
                "synchronously (use subscribe() to consume events from a task)",
                callback,
                event,
            )

    def _refresh(self) -> None:
        self.active = bool(self._subscribers) or any(self._callbacks.values())
