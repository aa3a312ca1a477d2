"""Middleware: async context managers entered around every attempt, and the logging one.

A middleware is a callable ``(job, ctx) -> async context manager``. The runner
enters each, in the order given, inside the attempt's cancel scope, then calls the
handler; they exit in reverse order. An exception one raises is the attempt's
error, judged and retried like a handler's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from typing import Any

from ._context import JobContext
from ._records import Job

Middleware = Callable[[Job[Any], JobContext[Any]], AbstractAsyncContextManager[Any]]

_JOB_ID: ContextVar[str | None] = ContextVar("trio_jobs_job_id", default=None)
_JOB_TYPE: ContextVar[str | None] = ContextVar("trio_jobs_job_type", default=None)
_ATTEMPT: ContextVar[int | None] = ContextVar("trio_jobs_attempt", default=None)


def check_middleware(middleware: Sequence[Middleware]) -> tuple[Middleware, ...]:
    """Return ``middleware`` as a tuple.

    Raises:
        TypeError: ``middleware`` is not a sequence of callables (naming it).
    """
    if isinstance(middleware, str | bytes) or not isinstance(middleware, Sequence):
        raise TypeError(f"middleware must be a sequence of callables, got {middleware!r}")
    for item in middleware:
        if not callable(item):
            raise TypeError(f"middleware must hold callables, got {item!r}")
    return tuple(middleware)


async def call_with_middleware(
    middleware: tuple[Middleware, ...],
    handler: Callable[[Job[Any], JobContext[Any]], Awaitable[Any]],
    job: Job[Any],
    ctx: JobContext[Any],
) -> Any:
    """Enter each of ``middleware`` in order, then await the handler inside them all."""
    async with AsyncExitStack() as stack:
        for item in middleware:
            await stack.enter_async_context(item(job, ctx))
        return await handler(job, ctx)


@asynccontextmanager
async def log_context(job: Job[Any], ctx: JobContext[Any]) -> AsyncIterator[None]:
    """Middleware: put the attempt's job id, type and number into the logging context.

    While the attempt runs (in its task, the tasks it starts, and a plain ``def``
    handler's thread: all inherit the context), :class:`JobLogFilter` copies them
    onto every log record as ``job_id``, ``job_type`` and ``attempt``, so a
    ``logging`` call anywhere in a handler's code carries them::

        handler = logging.StreamHandler()
        handler.addFilter(trio_jobs.JobLogFilter())
        handler.setFormatter(logging.Formatter("%(job_type)s %(job_id)s: %(message)s"))
        runner = JobRunner(middleware=[trio_jobs.log_context])
    """
    tokens = (_JOB_ID.set(job.id), _JOB_TYPE.set(job.type), _ATTEMPT.set(ctx.attempt))
    try:
        yield
    finally:
        _ATTEMPT.reset(tokens[2])
        _JOB_TYPE.reset(tokens[1])
        _JOB_ID.reset(tokens[0])


class JobLogFilter(logging.Filter):
    """A logging filter that adds ``job_id``, ``job_type`` and ``attempt`` to records.

    The values come from :func:`log_context`; outside an attempt they are
    ``None``. Attributes a record already has (from ``ctx.log`` or an ``extra=``)
    are left alone. Attach it to a handler (it sees records of every logger) or a
    logger; it never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields to ``record``; always True."""
        for name, var in (("job_id", _JOB_ID), ("job_type", _JOB_TYPE), ("attempt", _ATTEMPT)):
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True
