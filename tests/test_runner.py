"""JobRunner: construction, handlers, submit's validation, scheduling and attempts.

Time is virtual (``autojump_clock``): every timing below is exact on the Trio clock.
Lifecycle (entering, draining, stopping) is in test_runner_lifecycle.py; waiting
and cancelling in test_handles.py.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobContext,
    JobError,
    JobFailedError,
    JobPriority,
    JobRunner,
    JobStats,
    JobStatus,
    JobTimeoutError,
    MemoryStorage,
    RetryConfig,
    RetryStrategy,
    RunnerClosedError,
    UnknownJobTypeError,
)

NAN = math.nan


async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
    return job.payload


async def sleep_for(job: Job[Any], ctx: JobContext[Any]) -> float:
    """Sleep ``job.payload`` seconds and return the time it finished."""
    await trio.sleep(job.payload)
    return trio.current_time()


def fixed(seconds: float, attempts: int = 3) -> RetryConfig:
    return RetryConfig(
        max_attempts=attempts, base_delay=seconds, strategy=RetryStrategy.FIXED, jitter=False
    )


# -- construction -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": -3},
        {"default_timeout": -1.0},
        {"default_timeout": NAN},
        {"poll_interval": -0.5},
        {"poll_interval": NAN},
        # Choice: a zero poll interval would spin; it is rejected like a negative one.
        {"poll_interval": 0},
    ],
)
def test_invalid_constructor_values_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        JobRunner(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": "3"},
        {"concurrency": 2.5},
        {"concurrency": True},
        {"default_timeout": "60"},
        {"poll_interval": None},
        {"default_retry": {"max_attempts": 2}},
    ],
)
def test_wrongly_typed_constructor_values_raise_type_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        JobRunner(**kwargs)


def test_constructor_accepts_the_documented_extremes() -> None:
    JobRunner(concurrency=1, default_timeout=None, poll_interval=0.001)
    JobRunner(default_timeout=math.inf, default_retry=RetryConfig(max_attempts=1))


# -- handlers ---------------------------------------------------------------------


def test_register_handler_returns_the_handler_unchanged() -> None:
    runner = JobRunner()
    assert runner.register_handler("echo", echo) is echo


async def test_registering_a_type_twice_raises_and_keeps_the_first() -> None:
    async def other(job: Job[Any], ctx: JobContext[Any]) -> str:
        return "other"

    runner = JobRunner()
    runner.register_handler("echo", echo)
    with pytest.raises(ValueError, match="echo"):
        runner.register_handler("echo", other)
    with pytest.raises(ValueError, match="echo"):
        runner.handler("echo")(other)
    async with runner:
        assert await (await runner.submit("echo", "first")).wait() == "first"


async def test_the_decorator_registers_and_returns_the_function() -> None:
    runner = JobRunner()

    @runner.handler("double")
    async def double(job: Job[int], ctx: JobContext[int]) -> int:
        return job.payload * 2

    assert double.__name__ == "double"
    assert await double(Job(id="x", type="double", payload=4), None) == 8
    async with runner:
        assert await (await runner.submit("double", 21)).wait() == 42


async def test_a_handler_may_be_registered_after_entering() -> None:
    async with JobRunner() as runner:
        runner.register_handler("late", echo)
        assert await (await runner.submit("late", 7)).wait() == 7


# -- submit: validation before anything is stored ---------------------------------


async def test_submit_before_entering_raises_runner_closed() -> None:
    runner = JobRunner()
    runner.register_handler("echo", echo)
    with pytest.raises(RunnerClosedError):
        await runner.submit("echo")


async def test_submit_after_stop_raises_runner_closed() -> None:
    runner = JobRunner()
    runner.register_handler("echo", echo)
    async with runner:
        await runner.stop()
        with pytest.raises(RunnerClosedError) as info:
            await runner.submit("echo")
        assert isinstance(info.value, JobError)
    with pytest.raises(RunnerClosedError):
        await runner.submit("echo")
    assert await runner.stats() == JobStats()


async def test_submit_of_an_unknown_type_raises_and_stores_nothing() -> None:
    store = MemoryStorage()
    async with JobRunner(storage=store) as runner:
        with pytest.raises(UnknownJobTypeError, match="nope") as info:
            await runner.submit("nope", 1)
        assert isinstance(info.value, LookupError)
        assert await store.list_jobs() == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"priority": 4}, ValueError, "priority"),
        ({"priority": -1}, ValueError, "priority"),
        ({"priority": "HIGH"}, TypeError, "priority"),
        ({"delay": -1.0}, ValueError, "delay"),
        ({"delay": NAN}, ValueError, "delay"),
        # Choice: a job delayed forever would never run and block draining forever.
        ({"delay": math.inf}, ValueError, "delay"),
        ({"timeout": -0.001}, ValueError, "timeout"),
        ({"timeout": NAN}, ValueError, "timeout"),
        ({"retry": {"max_attempts": 2, "retries": 5}}, TypeError, "retries"),
        ({"retry": {"max_attempts": 0}}, ValueError, "max_attempts"),
        ({"retry": 3}, TypeError, "retry"),
        ({"metadata": ["not", "a", "mapping"]}, TypeError, "metadata"),
    ],
)
async def test_invalid_submit_arguments_raise_and_store_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    store = MemoryStorage()
    submitted: list[Job[Any]] = []
    async with JobRunner(storage=store) as runner:
        runner.register_handler("echo", echo)
        runner.on("job:submitted", submitted.append)
        with pytest.raises(error, match=match):
            await runner.submit("echo", **kwargs)
        assert await runner.stats() == JobStats()
        assert await store.list_jobs() == []
        assert submitted == []


async def test_submit_accepts_every_priority_as_enum_or_int() -> None:
    async with JobRunner() as runner:
        runner.register_handler("echo", echo)
        for value in (0, 1, 2, 3, JobPriority.CRITICAL):
            handle = await runner.submit("echo", priority=value)
            job = await runner.get_job(handle.id)
            assert job is not None
            assert job.priority is JobPriority(value)


async def test_submit_stores_the_job_as_given() -> None:
    async with JobRunner(default_timeout=30.0) as runner:
        runner.register_handler("echo", echo)
        handle = await runner.submit(
            "echo",
            {"a": 1},
            priority=JobPriority.HIGH,
            delay=10.0,
            metadata={"k": "v"},
            tenant_id="acme",
        )
        assert (handle.type, len(handle.id) > 0) == ("echo", True)
        job = await runner.get_job(handle.id)
        assert job is not None
        assert (job.id, job.type, job.payload, job.status) == (
            handle.id,
            "echo",
            {"a": 1},
            JobStatus.PENDING,
        )
        assert (job.priority, job.attempts, job.max_attempts) == (JobPriority.HIGH, 0, 3)
        assert (job.timeout, job.metadata, job.tenant_id) == (30.0, {"k": "v"}, "acme")
        assert job.created_at.utcoffset() == timedelta(0)
        # run_at is the wall-clock estimate of when the delay ends.
        assert job.run_at is not None
        assert abs((job.run_at - job.created_at).total_seconds() - 10.0) < 1.0
        await runner.stop()


async def test_a_retry_mapping_overrides_fields_of_default_retry(autojump_clock: Any) -> None:
    starts: list[float] = []

    async def flaky(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append(trio.current_time())
        raise RuntimeError("boom")

    async with JobRunner(default_retry=fixed(4.0, attempts=5)) as runner:
        runner.register_handler("flaky", flaky)
        handle = await runner.submit("flaky", retry={"max_attempts": 2})
        with pytest.raises(JobFailedError):
            await handle.wait()
    # max_attempts comes from the mapping, the 4 s fixed backoff from default_retry.
    assert starts == [0.0, 4.0]


async def test_a_full_retry_config_replaces_default_retry(autojump_clock: Any) -> None:
    starts: list[float] = []

    async def flaky(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append(trio.current_time())
        raise RuntimeError("boom")

    async with JobRunner(default_retry=fixed(4.0, attempts=5)) as runner:
        runner.register_handler("flaky", flaky)
        handle = await runner.submit("flaky", retry=fixed(1.0, attempts=3))
        job = await handle.get_status()
        assert job.max_attempts == 3
        with pytest.raises(JobFailedError):
            await handle.wait()
    assert starts == [0.0, 1.0, 2.0]


async def test_timeout_none_takes_default_timeout(autojump_clock: Any) -> None:
    async with JobRunner(default_timeout=5.0, default_retry=fixed(0, 1)) as runner:
        runner.register_handler("sleep", sleep_for)
        handle = await runner.submit("sleep", 100.0, timeout=None)
        assert (await handle.get_status()).timeout == 5.0
        with pytest.raises(JobTimeoutError):
            await handle.wait()
        assert trio.current_time() == 5.0


async def test_timeout_inf_means_no_timeout(autojump_clock: Any) -> None:
    async with JobRunner(default_timeout=5.0) as runner:
        runner.register_handler("sleep", sleep_for)
        handle = await runner.submit("sleep", 500.0, timeout=math.inf)
        assert (await handle.get_status()).timeout is None
        assert await handle.wait() == 500.0


async def test_default_timeout_none_means_no_timeout(autojump_clock: Any) -> None:
    async with JobRunner(default_timeout=None) as runner:
        runner.register_handler("sleep", sleep_for)
        assert await (await runner.submit("sleep", 500.0)).wait() == 500.0


# -- stats ------------------------------------------------------------------------


async def test_stats_counts_jobs_and_averages_execution_time(autojump_clock: Any) -> None:
    async def fail(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise ValueError("invalid input")

    async with JobRunner(default_retry=fixed(100.0, attempts=2)) as runner:
        runner.register_handler("sleep", sleep_for)
        runner.register_handler("fail", fail)
        assert (await runner.stats()).average_execution_time is None
        await runner.submit("sleep", 2.0)
        await runner.submit("sleep", 4.0)
        await runner.submit("fail")  # not retryable: FAILED at once
        await runner.submit("sleep", 50.0, timeout=1.0, retry={"max_attempts": 1})
        await (await runner.submit("sleep", 1.0, delay=60.0)).cancel()
        await runner.submit("sleep", 1.0, delay=60.0)
        await runner.submit("sleep", 1000.0)
        flaky = await runner.submit("sleep", 1000.0, timeout=3.0)  # retried after 100 s

        await trio.sleep(5.0)
        stats = await runner.stats()
        assert stats == JobStats(
            pending=1,
            running=1,
            retrying=1,
            completed=2,
            failed=1,
            cancelled=1,
            timeout=1,
            total_processed=5,
            average_execution_time=3.0,
        )
        assert (await flaky.get_status()).status is JobStatus.RETRYING
        await runner.stop(graceful=False)
    after = await runner.stats()
    assert (after.pending, after.running, after.retrying) == (2, 0, 1)
    assert after.total_processed == 5


# -- scheduling -------------------------------------------------------------------


class Recorder:
    """A handler that records (name, start time) and runs ``payload[1]`` seconds."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []
        self.gate = trio.Event()
        self.blocker_started = trio.Event()

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> None:
        name, seconds = job.payload
        if name == "blocker":
            self.blocker_started.set()
            await self.gate.wait()
            return
        self.starts.append((name, trio.current_time()))
        await trio.sleep(seconds)

    @property
    def order(self) -> list[str]:
        return [name for name, _ in self.starts]


async def test_higher_priority_first_and_fifo_within_a_priority(autojump_clock: Any) -> None:
    rec = Recorder()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("r", rec)
        await runner.submit("r", ("blocker", 0))
        await rec.blocker_started.wait()
        for name, priority in [
            ("low-1", JobPriority.LOW),
            ("normal-1", JobPriority.NORMAL),
            ("high-1", JobPriority.HIGH),
            ("critical", JobPriority.CRITICAL),
            ("normal-2", JobPriority.NORMAL),
            ("low-2", JobPriority.LOW),
            ("high-2", JobPriority.HIGH),
            ("normal-3", JobPriority.NORMAL),
        ]:
            await runner.submit("r", (name, 1.0), priority=priority)
        rec.gate.set()
    assert rec.order == [
        "critical",
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "normal-3",
        "low-1",
        "low-2",
    ]


async def test_a_critical_job_submitted_late_overtakes_queued_ones(autojump_clock: Any) -> None:
    rec = Recorder()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("r", rec)
        for i in range(4):
            await runner.submit("r", (f"low-{i}", 1.0), priority=JobPriority.LOW)
        await trio.sleep(1.5)
        await runner.submit("r", ("critical", 1.0), priority=JobPriority.CRITICAL)
    assert rec.starts == [
        ("low-0", 0.0),
        ("low-1", 1.0),
        ("critical", 2.0),
        ("low-2", 3.0),
        ("low-3", 4.0),
    ]


async def test_concurrency_is_never_exceeded_and_fully_used(autojump_clock: Any) -> None:
    running = 0
    most = 0

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await trio.sleep(1.0)
        finally:
            running -= 1

    async with JobRunner(concurrency=3) as runner:
        runner.register_handler("work", work)
        for _ in range(20):
            await runner.submit("work")
    assert most == 3
    # 20 one-second jobs, three at a time: ceil(20 / 3) = 7 rounds.
    assert trio.current_time() == 7.0


async def test_a_delay_is_timed_exactly_on_the_trio_clock(autojump_clock: Any) -> None:
    rec = Recorder()
    async with JobRunner(poll_interval=1000.0) as runner:
        runner.register_handler("r", rec)
        await runner.submit("r", ("delayed", 0.0), delay=2.5)
        await trio.sleep(1.0)
        await runner.submit("r", ("later", 0.0), delay=10.0)
    assert rec.starts == [("delayed", 2.5), ("later", 11.0)]


async def test_a_delayed_job_holds_no_slot(autojump_clock: Any) -> None:
    rec = Recorder()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("r", rec)
        await runner.submit("r", ("delayed", 1.0), delay=5.0)
        await runner.submit("r", ("a", 2.0))
        await runner.submit("r", ("b", 2.0))
    assert rec.starts == [("a", 0.0), ("b", 2.0), ("delayed", 5.0)]


async def test_a_retry_backoff_holds_no_slot(autojump_clock: Any) -> None:
    starts: list[tuple[str, float]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append((job.payload, trio.current_time()))
        if job.payload == "flaky" and ctx.attempt == 1:
            raise ConnectionError("reset")
        await trio.sleep(3.0)

    async with JobRunner(concurrency=1, default_retry=fixed(10.0)) as runner:
        runner.register_handler("work", work)
        await runner.submit("work", "flaky")
        await runner.submit("work", "other")
    assert starts == [("flaky", 0.0), ("other", 0.0), ("flaky", 10.0)]


async def test_delayed_and_retried_jobs_compete_by_priority_once_due(
    autojump_clock: Any,
) -> None:
    starts: list[tuple[str, float]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append((job.payload, trio.current_time()))
        if job.payload == "high-retried" and ctx.attempt == 1:
            raise ConnectionError("reset")
        await trio.sleep(2.0)

    async with JobRunner(concurrency=1, default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        await runner.submit("w", "high-retried", priority=JobPriority.HIGH)
        for i in range(3):
            await runner.submit("w", f"low-{i}", priority=JobPriority.LOW)
        await runner.submit("w", "critical-delayed", priority=JobPriority.CRITICAL, delay=3.0)
    # Due at 1.0 and 3.0, each waits only for the running attempt to end.
    assert starts == [
        ("high-retried", 0.0),
        ("low-0", 0.0),
        ("high-retried", 2.0),
        ("critical-delayed", 4.0),
        ("low-1", 6.0),
        ("low-2", 8.0),
    ]


async def test_a_submitted_job_starts_without_waiting_for_poll_interval(
    autojump_clock: Any,
) -> None:
    rec = Recorder()
    async with JobRunner(poll_interval=1000.0) as runner:
        runner.register_handler("r", rec)
        await runner.submit("r", ("first", 0.0))
        await trio.sleep(7.0)
        await runner.submit("r", ("idle-then-submitted", 0.0))
    assert rec.starts == [("first", 0.0), ("idle-then-submitted", 7.0)]


# -- checkpoints ------------------------------------------------------------------


async def test_async_methods_checkpoint() -> None:
    async with JobRunner() as runner:
        runner.register_handler("echo", echo)
        with trio.testing.assert_checkpoints():
            handle = await runner.submit("echo", 1)
        with trio.testing.assert_checkpoints():
            await runner.get_job(handle.id)
        with trio.testing.assert_checkpoints():
            await runner.get_job("unknown")
        with trio.testing.assert_checkpoints():
            await runner.stats()
        with trio.testing.assert_checkpoints():
            await runner.get_handle(handle.id)
        with trio.testing.assert_checkpoints():
            await handle.get_status()
        with trio.testing.assert_checkpoints():
            await handle.is_done()
        await handle.wait()
        with trio.testing.assert_checkpoints():
            await handle.wait()  # already final
        with trio.testing.assert_checkpoints():
            assert not await runner.cancel(handle.id)
        with trio.testing.assert_checkpoints():
            assert not await handle.cancel()
        pending = await runner.submit("echo", delay=5.0)
        with trio.testing.assert_checkpoints():
            assert await runner.cancel(pending.id)
        with trio.testing.assert_checkpoints():
            await runner.join()


async def test_stop_checkpoints() -> None:
    async with JobRunner() as runner:
        with trio.testing.assert_checkpoints():
            await runner.stop()
        with trio.testing.assert_checkpoints():
            await runner.stop()


async def test_job_types_are_the_types_with_a_handler() -> None:
    runner = JobRunner()
    assert runner.job_types == frozenset()
    runner.register_handler("a", echo)

    @runner.handler("b")
    async def b(job: Job[Any], ctx: JobContext[Any]) -> None:
        pass

    assert runner.job_types == {"a", "b"}
