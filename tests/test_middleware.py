"""Middleware around every attempt: order, errors, and the logging context."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobContext,
    JobFailedError,
    JobLogFilter,
    JobRunner,
    JobStatus,
    RetryConfig,
    log_context,
)

NO_RETRY = RetryConfig(max_attempts=1)


def recording(name: str, trail: list[str]) -> Any:
    @asynccontextmanager
    async def middleware(job: Job[Any], ctx: JobContext[Any]) -> AsyncIterator[None]:
        trail.append(f"{name} enter {job.type} #{ctx.attempt}")
        try:
            yield
        except Exception as exc:
            trail.append(f"{name} saw {exc}")
            raise
        finally:
            trail.append(f"{name} exit")

    return middleware


async def test_middleware_is_entered_in_order_around_every_attempt(autojump_clock: Any) -> None:
    trail: list[str] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        trail.append(f"handler #{ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("again")
        return "ok"

    retry = RetryConfig(max_attempts=2, base_delay=1.0, jitter=False)
    middleware = [recording("outer", trail), recording("inner", trail)]
    async with JobRunner(middleware=middleware, default_retry=retry) as runner:
        runner.register_handler("w", work)
        assert await (await runner.submit("w")).wait() == "ok"
    assert trail == [
        "outer enter w #1",
        "inner enter w #1",
        "handler #1",
        "inner saw again",
        "inner exit",
        "outer saw again",
        "outer exit",
        "outer enter w #2",
        "inner enter w #2",
        "handler #2",
        "inner exit",
        "outer exit",
    ]


@pytest.mark.parametrize("where", ["enter", "exit"])
async def test_an_exception_from_middleware_is_the_attempts_error(where: str) -> None:
    trail: list[str] = []

    @asynccontextmanager
    async def failing(job: Job[Any], ctx: JobContext[Any]) -> AsyncIterator[None]:
        if where == "enter":
            raise PermissionError("no session for you")
        yield
        raise PermissionError("commit refused")

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        trail.append("handler")
        return "ok"

    async with JobRunner(
        middleware=[recording("outer", trail), failing], default_retry=NO_RETRY
    ) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w")
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
    assert isinstance(info.value.__cause__, PermissionError)
    job = await runner.get_job(handle.id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert job.last_error.type == "PermissionError"
    message = "no session for you" if where == "enter" else "commit refused"
    assert trail == [
        "outer enter w #1",
        *(["handler"] if where == "exit" else []),
        f"outer saw {message}",
        "outer exit",
    ]


async def test_middleware_runs_inside_the_attempts_timeout(autojump_clock: Any) -> None:
    @asynccontextmanager
    async def slow_setup(job: Job[Any], ctx: JobContext[Any]) -> AsyncIterator[None]:
        await trio.sleep(10)
        yield

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        return "never"

    async with JobRunner(middleware=[slow_setup], default_retry=NO_RETRY) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", timeout=2.0)
        start = trio.current_time()
        assert await handle.is_done() is False
        with pytest.raises(TimeoutError):
            await handle.wait()
        assert trio.current_time() - start == 2.0


@pytest.mark.parametrize("middleware", ["not a list", [42]])
def test_middleware_that_is_not_a_sequence_of_callables_is_a_type_error(middleware: Any) -> None:
    with pytest.raises(TypeError, match="middleware"):
        JobRunner(middleware=middleware)


# -- log_context and JobLogFilter -----------------------------------------------------


@pytest.fixture
def app_records() -> Any:
    """Records of the ``myapp`` logger, through a handler with :class:`JobLogFilter`."""

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    handler = Keep()
    handler.addFilter(JobLogFilter())
    logger = logging.getLogger("myapp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)


async def test_log_context_puts_job_fields_on_any_log_record_also_from_threads(
    app_records: list[logging.LogRecord],
) -> None:
    log = logging.getLogger("myapp")

    async def in_loop(job: Job[Any], ctx: JobContext[Any]) -> None:
        log.info("async handler")
        if ctx.attempt == 1:
            raise ConnectionError("again")

    def in_thread(job: Job[Any], ctx: JobContext[Any]) -> None:
        log.info("sync handler")

    retry = RetryConfig(max_attempts=2, base_delay=0, jitter=False)
    async with JobRunner(middleware=[log_context], default_retry=retry) as runner:
        runner.register_handler("a", in_loop)
        runner.register_handler("s", in_thread)
        first = await runner.submit("a")
        await first.wait()
        second = await runner.submit("s")
        await second.wait()
    log.info("outside")
    fields = [(r.getMessage(), r.job_id, r.job_type, r.attempt) for r in app_records]  # type: ignore[attr-defined]
    assert fields == [
        ("async handler", first.id, "a", 1),
        ("async handler", first.id, "a", 2),
        ("sync handler", second.id, "s", 1),
        ("outside", None, None, None),
    ]


def test_job_log_filter_keeps_fields_a_record_already_has() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.job_id = "mine"
    assert JobLogFilter().filter(record) is True
    assert (record.job_id, record.job_type, record.attempt) == ("mine", None, None)  # type: ignore[attr-defined]
