"""JobContext: the job, the attempt, logging, cancellation, deadline, progress, metadata.

Time is virtual (``autojump_clock``); deadlines are exact on the Trio clock.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobContext,
    JobRunner,
    RetryConfig,
    RetryStrategy,
)

NO_RETRY = RetryConfig(max_attempts=1)


def fixed(seconds: float, attempts: int = 3) -> RetryConfig:
    return RetryConfig(
        max_attempts=attempts, base_delay=seconds, strategy=RetryStrategy.FIXED, jitter=False
    )


# -- the job, the attempt, the log ------------------------------------------------


async def test_the_context_carries_the_job_and_the_attempt(autojump_clock: Any) -> None:
    seen: list[tuple[str, Any, int, int]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        assert ctx.job == job
        seen.append((ctx.job.id, ctx.job.payload, ctx.attempt, ctx.job.attempts))
        if ctx.attempt == 1:
            raise ConnectionError("again")

    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", {"x": 1})
    assert seen == [(handle.id, {"x": 1}, 1, 1), (handle.id, {"x": 1}, 2, 2)]


async def test_log_records_carry_job_id_job_type_and_attempt(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.log.info("step %d", ctx.attempt, extra={"user_field": "kept"})
        if ctx.attempt == 1:
            raise ConnectionError("again")

    caplog.set_level(logging.INFO, logger="trio_jobs")
    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w")
    records = [r for r in caplog.records if "step" in r.getMessage()]
    assert [r.name for r in records] == ["trio_jobs", "trio_jobs"]
    assert [(r.job_id, r.job_type, r.attempt) for r in records] == [
        (handle.id, "w", 1),
        (handle.id, "w", 2),
    ]
    assert [r.user_field for r in records] == ["kept", "kept"]
    assert "step 1" in records[0].getMessage()


async def test_the_log_goes_to_the_runners_logger(caplog: pytest.LogCaptureFixture) -> None:
    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.log.warning("hello")

    caplog.set_level(logging.INFO)
    async with JobRunner(logger=logging.getLogger("myapp.jobs")) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w")
    (record,) = [r for r in caplog.records if "hello" in r.getMessage()]
    assert (record.name, record.levelno) == ("myapp.jobs", logging.WARNING)
    assert record.job_id == handle.id


# -- cancellation and deadline ----------------------------------------------------


async def test_cancel_scope_and_cancelled_follow_a_cancel(autojump_clock: Any) -> None:
    seen: list[Any] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        assert isinstance(ctx.cancel_scope, trio.CancelScope)
        seen.append(ctx.cancelled)
        with trio.CancelScope(shield=True):
            await trio.sleep(2.0)  # the job is cancelled meanwhile
        seen.append((ctx.cancelled, ctx.cancel_scope.cancel_called, trio.current_time()))
        await trio.lowlevel.checkpoint()  # outside the shield: raises Cancelled
        seen.append("not reached")

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w")
        await trio.sleep(1.0)
        await handle.cancel()
    assert seen == [False, (True, True, 2.0)]


async def test_cancelled_is_true_once_the_deadline_passes(autojump_clock: Any) -> None:
    seen: list[Any] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        with trio.CancelScope(shield=True):
            seen.append(ctx.cancelled)
            await trio.sleep(4.0)
            seen.append(ctx.cancelled)
            await trio.sleep(2.0)
            seen.append(ctx.cancelled)

    async with JobRunner(default_retry=NO_RETRY) as runner:
        runner.register_handler("w", work)
        await runner.submit("w", timeout=5.0)
    assert seen == [False, False, True]


async def test_cancelled_is_true_on_a_forced_stop(autojump_clock: Any) -> None:
    seen: list[bool] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(2.0)
        seen.append(ctx.cancelled)

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        await runner.submit("w")
        await trio.sleep(1.0)
        await runner.stop(graceful=False)
    assert seen == [True]


async def test_deadline_is_the_attempt_start_plus_the_timeout(autojump_clock: Any) -> None:
    deadlines: list[tuple[float, float, float]] = []
    scopes: list[trio.CancelScope] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        deadlines.append((trio.current_time(), ctx.deadline, ctx.cancel_scope.deadline))
        scopes.append(ctx.cancel_scope)
        if ctx.attempt == 1:
            raise ConnectionError("again")

    async with JobRunner(default_retry=fixed(2.0)) as runner:
        runner.register_handler("w", work)
        await trio.sleep(3.0)
        await runner.submit("w", timeout=7.0)
    assert deadlines == [(3.0, 10.0, 10.0), (5.0, 12.0, 12.0)]
    # Each attempt runs in its own scope.
    assert scopes[0] is not scopes[1]


@pytest.mark.parametrize(
    ("default_timeout", "timeout"), [(300.0, math.inf), (None, None), (math.inf, None)]
)
async def test_deadline_is_inf_without_a_timeout(
    default_timeout: float | None, timeout: float | None
) -> None:
    deadlines: list[float] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        deadlines.append(ctx.deadline)

    async with JobRunner(default_timeout=default_timeout) as runner:
        runner.register_handler("w", work)
        await runner.submit("w", timeout=timeout)
    assert deadlines == [math.inf]


# -- progress ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "message", "error"),
    [
        (-0.1, None, ValueError),
        (100.01, None, ValueError),
        (math.nan, None, ValueError),
        (math.inf, None, ValueError),
        (-math.inf, None, ValueError),
        ("50", None, TypeError),
        (None, None, TypeError),
        (50, 7, TypeError),
    ],
)
async def test_report_progress_rejects_invalid_values(
    progress: Any, message: Any, error: type[Exception]
) -> None:
    events: list[Job[Any]] = []
    raised: list[BaseException] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        try:
            ctx.report_progress(progress, message)
        except Exception as exc:
            raised.append(exc)

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        runner.on("job:progress", events.append)
        handle = await runner.submit("w")
    assert [type(e) for e in raised] == [error]
    assert events == []
    assert (await handle.get_status()).progress is None


async def test_progress_is_emitted_and_stored(autojump_clock: Any) -> None:
    events: list[tuple[float | None, str | None]] = []
    stored: list[tuple[float | None, str | None]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        ctx.report_progress(0)
        await trio.sleep(1.0)
        ctx.report_progress(42.5, "halfway-ish")
        await trio.sleep(1.0)
        ctx.report_progress(100, "done")
        return "ok"  # no checkpoint: the last report must still be stored

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        runner.on("job:progress", lambda job: events.append((job.progress, job.progress_message)))
        handle = await runner.submit("w")
        await trio.sleep(1.5)
        job = await handle.get_status()
        stored.append((job.progress, job.progress_message))
        assert await handle.wait() == "ok"
    job = await handle.get_status()
    stored.append((job.progress, job.progress_message))
    assert events == [(0.0, None), (42.5, "halfway-ish"), (100.0, "done")]
    assert stored == [(42.5, "halfway-ish"), (100.0, "done")]


async def test_progress_event_carries_the_running_job(autojump_clock: Any) -> None:
    events: list[Job[Any]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.report_progress(10)

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        runner.on("job:progress", events.append)
        handle = await runner.submit("w", metadata={"m": 1})
    (job,) = events
    assert (job.id, job.status.value, job.attempts, job.metadata) == (
        handle.id,
        "running",
        1,
        {"m": 1},
    )


# -- metadata ---------------------------------------------------------------------


async def test_update_metadata_merges_into_the_stored_job(autojump_clock: Any) -> None:
    during: list[Any] = []
    seen_by_attempt: list[dict[str, Any]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        seen_by_attempt.append(dict(job.metadata))
        ctx.update_metadata({"b": 3, f"attempt{ctx.attempt}": True})
        ctx.update_metadata({"c": 4})
        during.append(dict(ctx.job.metadata))
        await trio.sleep(1.0)
        if ctx.attempt == 1:
            raise ConnectionError("again")

    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", metadata={"a": 1, "b": 2})
        await trio.sleep(0.5)
        during.append(dict((await handle.get_status()).metadata))
    final = (await handle.get_status()).metadata
    merged = {"a": 1, "b": 3, "c": 4, "attempt1": True}
    assert during[:2] == [merged, merged]
    # Metadata stored by an attempt is the job's: the next attempt starts from it.
    assert seen_by_attempt == [{"a": 1, "b": 2}, merged]
    assert final == {**merged, "attempt2": True}


async def test_update_metadata_rejects_a_non_mapping() -> None:
    raised: list[BaseException] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        try:
            ctx.update_metadata([("a", 1)])
        except TypeError as exc:
            raised.append(exc)

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", metadata={"a": 0})
    assert len(raised) == 1
    assert (await handle.get_status()).metadata == {"a": 0}
