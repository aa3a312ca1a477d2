"""Events: the seed's names as synchronous callbacks, and subscriber channels.

Each event is checked with its exact positional arguments. Time is virtual.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobContext,
    JobRunner,
    JobStatus,
    MemoryStorage,
    RetryConfig,
    RetryStrategy,
    RunnerEvent,
)

JOB_EVENTS = [
    "job:submitted",
    "job:started",
    "job:progress",
    "job:completed",
    "job:failed",
    "job:retrying",
    "job:cancelled",
    "job:timeout",
]
RUNNER_EVENTS = ["runner:started", "runner:stopped", "runner:error"]


def fixed(seconds: float, attempts: int = 3) -> RetryConfig:
    return RetryConfig(
        max_attempts=attempts, base_delay=seconds, strategy=RetryStrategy.FIXED, jitter=False
    )


class Calls:
    """Records every event of a runner as ``(name, args)``."""

    def __init__(self, runner: JobRunner) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        for name in JOB_EVENTS + RUNNER_EVENTS:
            runner.on(name, functools.partial(self.record, name))

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def job_names(self) -> list[str]:
        return [name for name, _ in self.calls if name.startswith("job:")]


class Work:
    """``payload = (seconds, fail_attempts)``; keeps the exceptions it raised."""

    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        seconds, fail_attempts = job.payload
        if ctx.attempt <= fail_attempts:
            self.raised.append(ConnectionError(f"flaky #{ctx.attempt}"))
            raise self.raised[-1]
        ctx.report_progress(50.0, "half")
        await trio.sleep(seconds)
        return f"slept {seconds}"


# -- each event and its arguments -------------------------------------------------


async def test_a_completed_job_emits_submitted_started_progress_completed(
    autojump_clock: Any,
) -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        calls = Calls(runner)
        handle = await runner.submit("w", (2.0, 0))
    assert calls.names() == [
        "job:submitted",
        "job:started",
        "job:progress",
        "job:completed",
        "runner:stopped",
    ]
    (submitted,), (started,), (progress,), (done, result), () = (a for _, a in calls.calls)
    assert {submitted.id, started.id, progress.id, done.id} == {handle.id}
    assert (submitted.status, submitted.attempts) == (JobStatus.PENDING, 0)
    assert (started.status, started.attempts) == (JobStatus.RUNNING, 1)
    assert (progress.status, progress.progress, progress.progress_message) == (
        JobStatus.RUNNING,
        50.0,
        "half",
    )
    assert (done.status, done.result, done.execution_time, result) == (
        JobStatus.COMPLETED,
        "slept 2.0",
        2.0,
        "slept 2.0",
    )


async def test_retrying_carries_the_failed_attempt_and_the_delay_then_failed(
    autojump_clock: Any,
) -> None:
    work = Work()
    config = RetryConfig(max_attempts=3, base_delay=1.5, backoff_multiplier=2.0, jitter=False)
    async with JobRunner(default_retry=config) as runner:
        runner.register_handler("w", work)
        calls = Calls(runner)
        await runner.submit("w", (0.0, 3))
    assert calls.job_names() == [
        "job:submitted",
        "job:started",
        "job:retrying",
        "job:started",
        "job:retrying",
        "job:started",
        "job:failed",
    ]
    retrying = [args for name, args in calls.calls if name == "job:retrying"]
    assert [(job.status, attempt, delay) for job, attempt, delay in retrying] == [
        (JobStatus.RETRYING, 1, 1.5),
        (JobStatus.RETRYING, 2, 3.0),
    ]
    assert [job.last_error.attempt for job, _, _ in retrying] == [1, 2]
    ((failed_job, error),) = [args for name, args in calls.calls if name == "job:failed"]
    # The exception the last attempt raised, itself.
    assert error is work.raised[-1]
    assert (failed_job.status, failed_job.attempts) == (JobStatus.FAILED, 3)
    assert failed_job.last_error.message == "flaky #3"


async def test_timeout_is_emitted_for_each_attempt_that_times_out(autojump_clock: Any) -> None:
    async with JobRunner(default_retry=fixed(0.5, attempts=2)) as runner:
        runner.register_handler("w", Work())
        calls = Calls(runner)
        handle = await runner.submit("w", (10.0, 0), timeout=1.0)
    # Choice: a job that ends TIMEOUT gets job:timeout, not also job:failed.
    assert calls.job_names() == [
        "job:submitted",
        "job:started",
        "job:progress",
        "job:timeout",
        "job:retrying",
        "job:started",
        "job:progress",
        "job:timeout",
    ]
    timeouts = [args for name, args in calls.calls if name == "job:timeout"]
    assert [(len(args), args[0].id, args[0].attempts) for args in timeouts] == [
        (1, handle.id, 1),
        (1, handle.id, 2),
    ]
    retry_args = next(args for name, args in calls.calls if name == "job:retrying")
    assert retry_args[1:] == (1, 0.5)


@pytest.mark.parametrize("state", ["pending", "retrying", "running"])
async def test_cancelled_is_emitted_once_in_every_state(state: str, autojump_clock: Any) -> None:
    async with JobRunner(default_retry=fixed(10.0)) as runner:
        runner.register_handler("w", Work())
        calls = Calls(runner)
        payload = {"pending": (1.0, 0), "retrying": (1.0, 1), "running": (100.0, 0)}[state]
        handle = await runner.submit("w", payload, delay=5.0 if state == "pending" else 0.0)
        await trio.sleep(1.0)
        assert await handle.cancel()
    cancelled = [args for name, args in calls.calls if name == "job:cancelled"]
    assert [(len(a), a[0].id, a[0].status) for a in cancelled] == [
        (1, handle.id, JobStatus.CANCELLED)
    ]


async def test_runner_started_and_stopped_take_no_arguments() -> None:
    runner = JobRunner()
    calls = Calls(runner)
    async with runner:
        pass
    assert calls.calls == [("runner:started", ()), ("runner:stopped", ())]


class FlakyHeartbeatStore:
    """A MemoryStorage whose first heartbeat fails, to provoke ``runner:error``."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()
        self.error = OSError("store unreachable")
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def heartbeat(self, worker_id: str, job_ids: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await self.inner.heartbeat(worker_id, job_ids)


async def test_runner_error_carries_the_error_and_the_runner_carries_on(
    caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    store = FlakyHeartbeatStore()
    async with JobRunner(storage=store) as runner:
        runner.register_handler("w", Work())
        calls = Calls(runner)
        handle = await runner.submit("w", (10.0, 0))
        assert await handle.wait() == "slept 10.0"
    errors = [args for name, args in calls.calls if name == "runner:error"]
    assert errors == [(store.error,)]
    assert any(r.exc_info and r.exc_info[1] is store.error for r in caplog.records)


# -- on / off ---------------------------------------------------------------------


@pytest.mark.parametrize("event", JOB_EVENTS + RUNNER_EVENTS)
def test_every_documented_event_name_is_accepted(event: str) -> None:
    runner = JobRunner()
    unsubscribe = runner.on(event, print)
    unsubscribe()
    runner.off(event, print)


def test_a_callback_must_be_callable() -> None:
    with pytest.raises(TypeError):
        JobRunner().on("job:completed", "print")


@pytest.mark.parametrize("event", ["job:done", "job_completed", "completed", ""])
def test_an_unknown_event_name_raises_value_error(event: str) -> None:
    runner = JobRunner()
    with pytest.raises(ValueError, match="event"):
        runner.on(event, print)
    with pytest.raises(ValueError, match="event"):
        runner.off(event, print)


async def test_on_returns_an_unsubscribe_and_off_unregisters() -> None:
    first: list[str] = []
    second: list[str] = []

    def on_first(job: Job[Any], result: Any) -> None:
        first.append(result)

    def on_second(job: Job[Any], result: Any) -> None:
        second.append(result)

    async with JobRunner() as runner:
        runner.register_handler("echo", lambda job, ctx: _echo(job))
        unsubscribe = runner.on("job:completed", on_first)
        runner.on("job:completed", on_second)
        await (await runner.submit("echo", "a")).wait()
        unsubscribe()
        await (await runner.submit("echo", "b")).wait()
        runner.off("job:completed", on_second)
        await (await runner.submit("echo", "c")).wait()
        # Choice: unsubscribing twice, or off() for a callback never registered, is a no-op.
        unsubscribe()
        runner.off("job:completed", on_second)
    assert (first, second) == (["a"], ["a", "b"])


async def _echo(job: Job[Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return job.payload


async def test_a_raising_callback_is_logged_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def broken(*args: Any) -> None:
        raise RuntimeError("callback bug")

    runner = JobRunner()
    for event in JOB_EVENTS + RUNNER_EVENTS:
        runner.on(event, broken)
    runner.on("job:completed", lambda job, result: seen.append(result))
    reported: list[BaseException] = []
    runner.on("runner:error", reported.append)
    runner.register_handler("w", Work())
    async with runner:
        handle = await runner.submit("w", (0.0, 0))
        assert await handle.wait() == "slept 0.0"
    assert seen == ["slept 0.0"]
    # submitted, started, progress, completed, runner:started and runner:stopped: each
    # failure is logged and sent as runner:error (API.md), where the broken callback
    # fails again: that one is only logged, never sent on (no loop).
    assert len(reported) == 6
    assert all(isinstance(e, RuntimeError) for e in reported)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 12
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)


async def test_an_async_callback_is_reported_not_left_unawaited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Choice: callbacks are synchronous; an async one is a mistake, logged as an error
    # (and its coroutine closed, so no "never awaited" warning) rather than awaited.
    async def async_callback(job: Job[Any]) -> None:
        raise AssertionError("never run")

    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        runner.on("job:submitted", async_callback)
        await (await runner.submit("w", (0.0, 0))).wait()
    assert any("synchronously" in r.getMessage() for r in caplog.records)


# -- subscribe() ------------------------------------------------------------------


def drain_nowait(channel: trio.MemoryReceiveChannel[RunnerEvent]) -> list[RunnerEvent]:
    events = []
    while True:
        try:
            events.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


async def test_subscribe_buffers_events_from_the_moment_of_subscribing(
    autojump_clock: Any,
) -> None:
    work = Work()
    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        await (await runner.submit("w", (1.0, 0))).wait()
        async with runner.subscribe() as events:
            handle = await runner.submit("w", (2.0, 1))
            assert await handle.wait() == "slept 2.0"
            received = drain_nowait(events)
    assert [e.name for e in received] == [
        "job:submitted",
        "job:started",
        "job:retrying",
        "job:started",
        "job:progress",
        "job:completed",
    ]
    assert {e.job.id for e in received if e.job} == {handle.id}
    retrying, completed = received[2], received[5]
    assert (retrying.attempt, retrying.delay, retrying.result, retrying.error) == (
        1,
        1.0,
        None,
        None,
    )
    assert (completed.result, completed.job and completed.job.status) == (
        "slept 2.0",
        JobStatus.COMPLETED,
    )


async def test_a_failed_event_record_carries_the_error() -> None:
    work = Work()
    async with JobRunner(default_retry=fixed(0.0, attempts=1)) as runner:
        runner.register_handler("w", work)
        async with runner.subscribe() as events:
            await runner.submit("w", (0.0, 1))
            await runner.join()
            *_, failed = drain_nowait(events)
    assert (failed.name, failed.error) == ("job:failed", work.raised[0])


async def test_a_full_bounded_buffer_drops_events_and_never_blocks(autojump_clock: Any) -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        async with (
            runner.subscribe(max_buffer_size=2) as events,
            runner.subscribe() as everything,
        ):
            handle = await runner.submit("w", (3.0, 0))
            assert await handle.wait() == "slept 3.0"
            assert trio.current_time() == 3.0
            first = drain_nowait(events)
            await runner.submit("w", (0.0, 0))
            await runner.join()
            second = drain_nowait(events)
            unbounded = drain_nowait(everything)
    assert [e.name for e in first] == ["job:submitted", "job:started"]
    # Room again: later events arrive (up to the bound).
    assert [e.name for e in second] == ["job:submitted", "job:started"]
    # Dropped for the slow subscriber only.
    assert [e.name for e in unbounded] == [
        "job:submitted",
        "job:started",
        "job:progress",
        "job:completed",
    ] * 2


async def test_the_channel_ends_when_the_runner_stops(autojump_clock: Any) -> None:
    names: list[str] = []
    runner = JobRunner()
    runner.register_handler("w", Work())

    async def consume(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with runner.subscribe() as events:
            task_status.started()
            async for event in events:
                names.append(event.name)
        names.append("<end>")

    async with trio.open_nursery() as nursery:
        # Subscribed before entering: runner:started is seen too.
        await nursery.start(consume)
        async with runner:
            await runner.submit("w", (1.0, 0))
    assert names[0] == "runner:started"
    assert names[-2:] == ["runner:stopped", "<end>"]
    assert trio.current_time() == 1.0


async def test_subscribing_after_the_runner_stopped_yields_an_ended_channel() -> None:
    # Choice: nothing will ever come, so the channel ends at once instead of hanging.
    async with JobRunner() as runner:
        pass
    async with runner.subscribe() as events:
        assert [event async for event in events] == []


async def test_a_subscriber_that_leaves_early_breaks_nothing(autojump_clock: Any) -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        async with runner.subscribe(max_buffer_size=1) as events:
            handle = await runner.submit("w", (1.0, 0))
            first = await events.receive()
        assert first.name == "job:submitted"
        assert await handle.wait() == "slept 1.0"
