"""Plain ``def`` handlers: run in a worker thread that holds its attempt's slot.

A sync handler is wrapped, at registration, in :class:`SyncHandler`, an async
callable the engine awaits like any handler. The thread is never abandoned: the
attempt (and its concurrency slot) lasts until the function returns, so a runner
never has more handler threads than its ``concurrency``. Cancellation cannot
interrupt a thread; instead ``ctx.cancelled`` turns True the moment the attempt's
scope is cancelled (a cancel, the timeout, a forced stop), for code that checks it,
and once the function returns the attempt ends as cancelled or timed out.

A plain callable that returns an awaitable (``lambda job, ctx: fetch(job)``) keeps
working: what it returns is awaited in the loop.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, final

import outcome
import trio

from ._context import JobContext
from ._records import Job

Handler = Callable[[Job[Any], JobContext[Any]], Awaitable[Any]]


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns an awaitable.

    True for ``async def`` functions, also behind :func:`functools.partial`, as
    bound methods, or as an object's ``async def __call__``.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, type):
        return False  # calling a class builds an instance
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (the method, not callable())
    return call is not None and inspect.iscoroutinefunction(call)


def _is_generator(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def as_handler(handler: Callable[..., Any], limiter: trio.CapacityLimiter) -> Handler:
    """Return what the engine awaits for ``handler``: itself, or a thread wrapper.

    Raises:
        TypeError: ``handler`` is not callable, or is a generator function (of
            either kind), which a runner cannot run as a job.
    """
    if not callable(handler) or _is_generator(handler):
        raise TypeError(
            "handler must be an `async def` function or a plain `def` function "
            f"(run in a worker thread), got {handler!r}"
        )
    if is_async_callable(handler):
        return handler
    return SyncHandler(handler, limiter)


@final
class SyncHandler:
    """A plain ``def`` handler, run by :func:`trio.to_thread.run_sync` with ``limiter``.

    Args:
        fn: ``def handler(job, ctx) -> result``.
        limiter: Bounds this runner's handler threads (its ``concurrency``), apart
            from the threads the stores' drivers use.
    """

    __slots__ = ("__wrapped__", "_limiter")

    def __init__(
        self, fn: Callable[[Job[Any], JobContext[Any]], Any], limiter: trio.CapacityLimiter
    ) -> None:
        self.__wrapped__ = fn
        self._limiter = limiter

    def __repr__(self) -> str:
        return f"<sync handler {self.__wrapped__!r}>"

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> Any:
        cancelled = threading.Event()
        ctx._link_thread(cancelled)
        done: outcome.Outcome[Any] | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_flag_cancellation, cancelled)
                # Not abandoned on cancel: the attempt, its slot and its lease last
                # until the function returns.
                done = await trio.to_thread.run_sync(
                    outcome.capture, self.__wrapped__, job, ctx, limiter=self._limiter
                )
                nursery.cancel_scope.cancel()  # the watcher's work is over
        except BaseExceptionGroup as group:
            # The watcher saw the attempt cancelled: nothing but Cancelled is in
            # here, and the checkpoint below raises a fresh one for the attempt.
            if group.split(trio.Cancelled)[1] is not None:
                raise
        assert done is not None
        try:
            # Cancelled while the thread ran: the attempt ends cancelled (or timed
            # out), as an async handler interrupted at a checkpoint would.
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            if isinstance(done, outcome.Value) and inspect.iscoroutine(done.value):
                done.value.close()
            raise
        value = done.unwrap()
        if inspect.isawaitable(value):
            # A plain callable around an async function (``lambda job, ctx: f(job)``):
            # it built the awaitable in the thread; it runs here, in the loop.
            return await value
        return value


async def _flag_cancellation(flag: threading.Event) -> None:
    """Set ``flag`` the moment the enclosing scope (the attempt's) is cancelled."""
    try:
        await trio.sleep_forever()
    finally:
        flag.set()
