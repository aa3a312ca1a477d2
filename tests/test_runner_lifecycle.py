"""JobRunner's lifecycle: entering, draining on exit, stop(), errors from the body.

Time is virtual (``autojump_clock``); stop and exit times are exact.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobContext,
    JobFailedError,
    JobHandle,
    JobNotFoundError,
    JobRunner,
    JobStatus,
    MemoryStorage,
    RetryConfig,
    RetryStrategy,
    RunnerStoppedError,
)


def fixed(seconds: float, attempts: int = 3) -> RetryConfig:
    return RetryConfig(
        max_attempts=attempts, base_delay=seconds, strategy=RetryStrategy.FIXED, jitter=False
    )


class Work:
    """A handler driven by its payload: ``{"sleep": s, "fail_attempts": n}``.

    It records each attempt's start, and whether the attempt was cancelled.
    """

    def __init__(self) -> None:
        self.starts: list[tuple[str, int, float]] = []
        self.cancelled: list[tuple[str, float]] = []

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        name = job.payload["name"]
        self.starts.append((name, ctx.attempt, trio.current_time()))
        if ctx.attempt <= job.payload.get("fail_attempts", 0):
            raise ConnectionError(f"{name} flaked")
        try:
            await trio.sleep(job.payload.get("sleep", 0.0))
        except trio.Cancelled:
            self.cancelled.append((name, trio.current_time()))
            raise
        return f"{name} done"

    def names(self) -> list[str]:
        return [name for name, _, _ in self.starts]


async def statuses(runner: JobRunner, *handles: JobHandle[Any]) -> list[JobStatus]:
    return [(await h.get_status()).status for h in handles]


async def expect_stopped(handle: JobHandle[Any], when: list[float]) -> None:
    with pytest.raises(RunnerStoppedError):
        await handle.wait()
    when.append(trio.current_time())


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task alive in this run, found from the root task down."""
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


# -- entering ---------------------------------------------------------------------


async def test_entering_returns_the_runner_and_running_tracks_the_state(
    autojump_clock: Any,
) -> None:
    work = Work()
    runner = JobRunner()
    runner.register_handler("w", work)
    assert not runner.running
    async with runner as entered:
        assert entered is runner
        assert runner.running
        await runner.submit("w", {"name": "a", "sleep": 5.0})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.stop)
            await trio.sleep(1.0)
            # Stopping: no longer accepting work, although an attempt still runs.
            assert not runner.running
        assert trio.current_time() == 5.0
        assert not runner.running
    assert not runner.running


async def test_runner_started_and_stopped_are_emitted_once_each() -> None:
    events: list[str] = []
    runner = JobRunner()
    runner.on("runner:started", lambda: events.append("started"))
    runner.on("runner:stopped", lambda: events.append("stopped"))
    async with runner:
        assert events == ["started"]
        await runner.stop()
        assert events == ["started", "stopped"]
        await runner.stop()
        await runner.stop(graceful=False)
    assert events == ["started", "stopped"]


async def test_a_runner_can_be_entered_once() -> None:
    runner = JobRunner()
    async with runner:
        with pytest.raises(RuntimeError):
            await runner.__aenter__()
        assert runner.running
    with pytest.raises(RuntimeError):
        async with runner:
            pass


async def test_stop_before_entering_is_harmless() -> None:
    # Choice: like stopping twice, stopping a runner that never ran does nothing.
    runner = JobRunner()
    await runner.stop()
    await runner.stop(graceful=False)
    assert not runner.running


# -- leaving the block: drain -----------------------------------------------------


async def test_leaving_the_block_drains_pending_delayed_retrying_and_running_jobs(
    autojump_clock: Any,
) -> None:
    work = Work()
    async with JobRunner(concurrency=1, default_retry=fixed(30.0)) as runner:
        runner.register_handler("w", work)
        retrying = await runner.submit("w", {"name": "retrying", "fail_attempts": 1})
        running = await runner.submit("w", {"name": "running", "sleep": 5.0})
        pending = await runner.submit("w", {"name": "pending", "sleep": 1.0})
        delayed = await runner.submit("w", {"name": "delayed", "sleep": 1.0}, delay=20.0)
        await trio.sleep(0.5)
        assert await statuses(runner, retrying, running, pending, delayed) == [
            JobStatus.RETRYING,
            JobStatus.RUNNING,
            JobStatus.PENDING,
            JobStatus.PENDING,
        ]
    assert trio.current_time() == 30.0
    assert await statuses(runner, retrying, running, pending, delayed) == [JobStatus.COMPLETED] * 4
    assert [start for start in work.starts if start[0] != "retrying"] == [
        ("running", 1, 0.0),
        ("pending", 1, 5.0),
        ("delayed", 1, 20.0),
    ]


async def test_leaving_the_block_and_join_return_when_the_last_job_ends(
    autojump_clock: Any,
) -> None:
    # Like a nursery waiting for its children: no poll_interval of lag with the
    # in-memory store. Repeated because the lag depends on Trio's scheduling order.
    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        await trio.sleep(1.0)

    lags = []
    for repeat in range(30):
        concurrency, jobs = [(1, 1), (1, 2), (2, 3), (3, 7)][repeat % 4]
        start = trio.current_time()
        async with JobRunner(concurrency=concurrency, poll_interval=1000.0) as runner:
            runner.register_handler("w", work)
            for _ in range(jobs):
                await runner.submit("w")
            await runner.join()
            lags.append(trio.current_time() - start - math.ceil(jobs / concurrency))
            await runner.submit("w")
        lags.append(trio.current_time() - start - math.ceil(jobs / concurrency) - 1)
    assert set(lags) == {0.0}


async def test_draining_waits_for_jobs_submitted_while_draining(autojump_clock: Any) -> None:
    work = Work()
    runner = JobRunner()

    @runner.handler("parent")
    async def parent(job: Job[Any], ctx: JobContext[Any]) -> None:
        await trio.sleep(1.0)
        await runner.submit("w", {"name": "child", "sleep": 2.0}, delay=3.0)

    runner.register_handler("w", work)
    async with runner:
        await runner.submit("parent")
    assert work.starts == [("child", 1, 4.0)]
    assert trio.current_time() == 6.0


async def test_join_waits_for_all_jobs_and_the_runner_keeps_running(autojump_clock: Any) -> None:
    work = Work()
    async with JobRunner() as runner:
        runner.register_handler("w", work)
        await runner.submit("w", {"name": "a", "sleep": 2.0})
        await runner.submit("w", {"name": "b", "sleep": 1.0}, delay=4.0)
        await runner.join()
        assert trio.current_time() == 5.0
        assert runner.running
        await runner.submit("w", {"name": "c", "sleep": 1.0})
        await runner.join()
        assert trio.current_time() == 6.0


async def test_join_raises_runner_stopped_when_the_runner_stops_first(autojump_clock: Any) -> None:
    # Choice: join() cannot return "all done" when stop() left jobs unfinished, and
    # waiting forever would hang; it raises RunnerStoppedError, as handle.wait() does.
    work = Work()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("w", work)
        await runner.submit("w", {"name": "a", "sleep": 5.0})
        await runner.submit("w", {"name": "b"})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.stop)
            with pytest.raises(RunnerStoppedError):
                await runner.join()
    assert work.names() == ["a"]


async def test_join_raises_as_soon_as_the_runner_stops(autojump_clock: Any) -> None:
    # Repeated because the lag depends on Trio's scheduling order.
    lags = []
    for _ in range(30):
        work = Work()
        async with JobRunner(concurrency=1, poll_interval=1.0) as runner:
            runner.register_handler("w", work)
            await runner.submit("w", {"name": "a", "sleep": 5.0})
            await runner.submit("w", {"name": "b"})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner.stop)
                start = trio.current_time()
                with pytest.raises(RunnerStoppedError):
                    await runner.join()
                lags.append(trio.current_time() - start - 5.0)
    assert set(lags) == {0.0}


# -- stop() -----------------------------------------------------------------------


async def test_graceful_stop_lets_running_finish_and_leaves_the_rest_in_the_store(
    autojump_clock: Any,
) -> None:
    work = Work()
    store = MemoryStorage()
    stopped_at: list[float] = []
    async with JobRunner(concurrency=1, storage=store, default_retry=fixed(100.0)) as runner:
        runner.register_handler("w", work)
        retrying = await runner.submit("w", {"name": "retrying", "fail_attempts": 1})
        running = await runner.submit("w", {"name": "running", "sleep": 5.0})
        pending = await runner.submit("w", {"name": "pending"})
        delayed = await runner.submit("w", {"name": "delayed"}, delay=2.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_stopped, pending, stopped_at)
            await trio.sleep(1.0)
            await runner.stop()
        assert trio.current_time() == 5.0
        assert stopped_at == [5.0]
        assert await running.wait() == "running done"
        assert await statuses(runner, retrying, pending, delayed) == [
            JobStatus.RETRYING,
            JobStatus.PENDING,
            JobStatus.PENDING,
        ]
        assert [(await h.get_status()).attempts for h in (pending, delayed)] == [0, 0]
        # Nothing new starts after stop, however long we wait.
        await trio.sleep(500.0)
    assert work.names() == ["retrying", "running"]
    with pytest.raises(RunnerStoppedError):
        await pending.wait()

    # A store outlives its runner: the next runner on it runs what was left.
    async with JobRunner(storage=store) as again:
        again.register_handler("w", work)
        assert await (await again.get_handle(pending.id)).wait() == "pending done"
    assert await statuses(again, retrying, pending, delayed) == [JobStatus.COMPLETED] * 3


async def test_forced_stop_cancels_running_attempts_and_gives_them_back_uncounted(
    autojump_clock: Any,
) -> None:
    work = Work()
    stopped_at: list[float] = []
    cancelled_events: list[Job[Any]] = []
    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        runner.on("job:cancelled", cancelled_events.append)
        handle = await runner.submit("w", {"name": "a", "sleep": 100.0, "fail_attempts": 1})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_stopped, handle, stopped_at)
            await trio.sleep(3.0)
            await runner.stop(graceful=False)
            assert trio.current_time() == 3.0
    assert stopped_at == [3.0]
    assert work.cancelled == [("a", 3.0)]
    job = await handle.get_status()
    # The second attempt was interrupted: not the job's fault, so not counted.
    assert (job.status, job.attempts) == (JobStatus.PENDING, 1)
    assert job.last_error is not None
    assert job.last_error.attempt == 1
    # Choice: a forced stop is not the job's cancellation: no job:cancelled event.
    assert cancelled_events == []


async def test_forced_stop_during_a_graceful_stop_forces_it(autojump_clock: Any) -> None:
    # Choice: stop(False) escalates a graceful stop in progress, as a second Ctrl+C would.
    work = Work()
    async with JobRunner() as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", {"name": "a", "sleep": 100.0})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.stop)
            await trio.sleep(2.0)
            await runner.stop(graceful=False)
        assert trio.current_time() == 2.0
    assert (await handle.get_status()).status is JobStatus.PENDING


async def test_stopping_twice_is_harmless(autojump_clock: Any) -> None:
    work = Work()
    async with JobRunner() as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", {"name": "a", "sleep": 1.0})
        await runner.stop()
        await runner.stop()
        await runner.stop(graceful=False)
        assert await handle.wait() == "a done"
    await runner.stop()


# -- errors and cancellation from outside -----------------------------------------


async def test_an_exception_in_the_body_propagates_unchanged(autojump_clock: Any) -> None:
    work = Work()
    error = ValueError("mine")
    stopped_at: list[float] = []
    runner = JobRunner()
    runner.register_handler("w", work)
    async with trio.open_nursery() as waiters:
        with pytest.raises(ValueError) as info:  # noqa: PT012 - the block is what raises
            async with runner:
                handle = await runner.submit("w", {"name": "a", "sleep": 100.0})
                waiters.start_soon(expect_stopped, handle, stopped_at)
                await runner.submit("w", {"name": "later"}, delay=10.0)
                await trio.sleep(1.0)
                raise error
    assert info.value is error
    assert stopped_at == [1.0]
    # Running jobs were cancelled, pending ones not drained: we left at once.
    assert trio.current_time() == 1.0
    assert work.cancelled == [("a", 1.0)]
    assert work.names() == ["a"]
    # Choice: as in a forced stop, the interrupted job goes back to PENDING uncounted.
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)


async def test_cancelling_the_block_from_outside_exits_promptly(autojump_clock: Any) -> None:
    work = Work()
    with trio.move_on_after(2.0) as scope:
        async with JobRunner() as runner:
            runner.register_handler("w", work)
            await runner.submit("w", {"name": "a", "sleep": 100.0})
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 2.0
    assert work.cancelled == [("a", 2.0)]
    assert not runner.running


async def test_cancelling_the_block_while_it_drains_exits_promptly(autojump_clock: Any) -> None:
    work = Work()
    with trio.move_on_after(2.0) as scope:
        async with JobRunner() as runner:
            runner.register_handler("w", work)
            handle = await runner.submit("w", {"name": "a", "sleep": 100.0})
    assert scope.cancelled_caught
    assert trio.current_time() == 2.0
    assert work.cancelled == [("a", 2.0)]
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_from_a_handler_propagates_bare(
    error_type: type[BaseException], autojump_clock: Any
) -> None:
    async def interrupt(job: Job[Any], ctx: JobContext[Any]) -> None:
        await trio.sleep(1.0)
        raise error_type

    with pytest.raises(error_type) as info:  # noqa: PT012 - the block is what raises
        async with JobRunner() as runner:
            runner.register_handler("ki", interrupt)
            handle = await runner.submit("ki")
            await trio.sleep_forever()
    # Not an ExceptionGroup: what the user would have seen without a runner.
    assert type(info.value) is error_type
    assert trio.current_time() == 1.0
    job = await handle.get_status()
    # API.md: the handler's own KeyboardInterrupt/SystemExit counts its attempt (a job
    # that kills its worker every time must end FAILED, not loop), retried while
    # attempts are left, like a crashed attempt.
    assert (job.status, job.attempts) == (JobStatus.RETRYING, 1)
    assert job.last_error is not None
    assert job.last_error.type == error_type.__name__


@pytest.mark.parametrize("ending", ["drain", "force", "cancelled", "handler-interrupt"])
async def test_no_task_outlives_the_block(ending: str, autojump_clock: Any) -> None:
    before = all_tasks()

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.report_progress(10.0)
        ctx.update_metadata({"step": 1})
        await trio.sleep(job.payload)
        if ending == "handler-interrupt":
            raise KeyboardInterrupt

    waiters: list[JobHandle[Any]] = []
    interrupted = ending == "handler-interrupt"
    expected = pytest.raises(KeyboardInterrupt) if interrupted else contextlib.nullcontext()
    with trio.move_on_after(3.0), expected:
        async with JobRunner(concurrency=2) as runner:
            runner.register_handler("w", work)
            for seconds in (1.0, 2.0, 5.0):
                waiters.append(await runner.submit("w", seconds))
            await runner.submit("w", 1.0, delay=2.0)
            assert len(all_tasks()) > len(before)
            if ending == "force":
                await trio.sleep(1.5)
                await runner.stop(graceful=False)
            elif ending in ("cancelled", "handler-interrupt"):
                await trio.sleep_forever()
    assert all_tasks() == before


# -- after the runner stopped -----------------------------------------------------


async def test_reading_and_cancelling_keep_working_after_stop(autojump_clock: Any) -> None:
    async def fail(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise ValueError("invalid input")

    work = Work()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("w", work)
        runner.register_handler("fail", fail)
        done = await runner.submit("w", {"name": "done", "sleep": 1.0})
        failed = await runner.submit("fail")
        left = await runner.submit("w", {"name": "left"}, delay=100.0)
        other = await runner.submit("w", {"name": "other"}, delay=100.0)
        await trio.sleep(2.0)
        await runner.stop()

    assert (await runner.get_job(done.id)) == await done.get_status()
    assert await (await runner.get_handle(done.id)).wait() == "done done"
    assert await done.wait() == "done done"
    with pytest.raises(JobFailedError) as info:
        await failed.wait()
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RunnerStoppedError):
        await (await runner.get_handle(left.id)).wait()
    with pytest.raises(JobNotFoundError):
        await runner.get_handle("no-such-job")
    assert await runner.get_job("no-such-job") is None
    assert not await runner.cancel(done.id)
    assert await runner.cancel(left.id)
    assert await other.cancel()
    assert await statuses(runner, left, other) == [JobStatus.CANCELLED] * 2
    assert await left.is_done()
    stats = await runner.stats()
    assert (stats.completed, stats.failed, stats.cancelled, stats.pending) == (1, 1, 2, 0)
    assert trio.current_time() == 2.0
