"""Plain ``def`` handlers: a worker thread per attempt, holding its slot until it returns.

Threads and the virtual clock: while a handler's thread runs, every Trio task is
blocked, so ``autojump_clock`` jumps straight to the next deadline (the job's
timeout). Tests use that on purpose, and meet the threads through
:class:`threading.Condition` waits run in a thread of their own, never sleeps.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobCancelledError,
    JobContext,
    JobFailedError,
    JobRunner,
    JobStatus,
    JobTimeoutError,
    RetryConfig,
)

NO_RETRY = RetryConfig(max_attempts=1)


class Board:
    """Shared state between handler threads and the test, under one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.live = 0
        self.most_live = 0
        self.started = 0
        self.saw_cancelled = 0
        self.release = False

    def enter(self) -> None:
        with self.cond:
            self.live += 1
            self.started += 1
            self.most_live = max(self.most_live, self.live)
            self.cond.notify_all()

    def leave(self) -> None:
        with self.cond:
            self.live -= 1
            self.cond.notify_all()

    def update(self, **changes: Any) -> None:
        with self.cond:
            for name, value in changes.items():
                setattr(self, name, value)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Block the calling thread until ``predicate()`` holds (under the condition)."""
        with self.cond:
            assert self.cond.wait_for(predicate, timeout=30), "the handlers never got there"

    def poll_for(self, predicate: Callable[[], bool]) -> None:
        """Like :meth:`wait_for`, for a predicate reading ``ctx.cancelled`` (a flag that
        notifies nobody): checked again every millisecond."""
        with self.cond:
            while not predicate():
                self.cond.wait(0.001)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait in Trio (a thread blocks) until ``predicate()`` holds."""
        await trio.to_thread.run_sync(self.wait_for, predicate)


@pytest.fixture
def board() -> Iterator[Board]:
    board = Board()
    yield board
    board.update(release=True)  # no handler thread outlives its test


def wait_for_cancel(ctx: JobContext[Any]) -> None:
    """What cooperative sync code does: check ``ctx.cancelled`` between steps."""
    while not ctx.cancelled:
        threading.Event().wait(0.001)  # one step of blocking work


# -- results and errors ---------------------------------------------------------------


async def test_plain_def_handler_runs_in_a_worker_thread_and_returns_its_result() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def add(job: Job[Any], ctx: JobContext[Any]) -> int:
        threads.append(threading.get_ident())
        return int(job.payload["a"] + job.payload["b"])

    async with JobRunner() as runner:
        runner.register_handler("add", add)
        handle = await runner.submit("add", {"a": 2, "b": 3})
        assert await handle.wait() == 5
    job = await runner.get_job(handle.id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == (JobStatus.COMPLETED, 5, 1)
    assert len(threads) == 1
    assert threads[0] != loop_thread


async def test_plain_def_handler_exception_is_retried_then_fails_the_job() -> None:
    attempts: list[int] = []

    def flaky(job: Job[Any], ctx: JobContext[Any]) -> None:
        attempts.append(ctx.attempt)
        raise ConnectionError(f"attempt {ctx.attempt} refused")

    retry = RetryConfig(max_attempts=3, base_delay=0, jitter=False)
    async with JobRunner(default_retry=retry) as runner:
        runner.register_handler("flaky", flaky)
        handle = await runner.submit("flaky")
        with pytest.raises(JobFailedError, match="attempt 3 refused") as info:
            await handle.wait()
    assert attempts == [1, 2, 3]
    assert isinstance(info.value.__cause__, ConnectionError)
    job = await runner.get_job(handle.id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert (job.last_error.type, job.last_error.attempt) == ("ConnectionError", 3)


# -- timeouts and cancellation --------------------------------------------------------


@pytest.mark.parametrize("ends_by", ["returning", "raising"])
async def test_timeout_flips_ctx_cancelled_in_the_thread_and_the_job_times_out(
    mock_clock: trio.testing.MockClock, board: Board, ends_by: str
) -> None:
    # The virtual clock moves only when told: the thread reads ctx.cancelled before
    # the deadline (however long it takes to start), then the clock passes it.
    seen: list[tuple[bool, float]] = []

    def slow(job: Job[Any], ctx: JobContext[Any]) -> str:
        seen.append((ctx.cancelled, ctx.deadline))
        board.enter()
        wait_for_cancel(ctx)
        seen.append((ctx.cancelled, ctx.deadline))
        if ends_by == "raising":
            raise RuntimeError("stopped early")
        return "a result nobody will see"

    timeouts: list[Job[Any]] = []
    async with JobRunner(default_retry=NO_RETRY) as runner:
        runner.on("job:timeout", timeouts.append)
        runner.register_handler("slow", slow)
        started = trio.current_time()
        handle = await runner.submit("slow", timeout=5.0)
        await board.until(lambda: board.started == 1)
        mock_clock.jump(5.0)
        with pytest.raises(JobTimeoutError):
            await handle.wait()
    assert seen == [(False, started + 5.0), (True, started + 5.0)]
    job = await runner.get_job(handle.id)
    assert job is not None
    assert (job.status, job.result) == (JobStatus.TIMEOUT, None)
    assert [j.id for j in timeouts] == [handle.id]


async def test_cancel_flips_ctx_cancelled_and_the_job_ends_cancelled(board: Board) -> None:
    def stubborn(job: Job[Any], ctx: JobContext[Any]) -> str:
        board.enter()
        wait_for_cancel(ctx)
        board.update(saw_cancelled=board.saw_cancelled + 1)
        board.leave()
        return "done anyway"

    async with JobRunner(default_retry=NO_RETRY) as runner:
        runner.register_handler("stubborn", stubborn)
        handle = await runner.submit("stubborn", timeout=3600.0)
        await board.until(lambda: board.started == 1)
        assert await handle.cancel() is True
        with pytest.raises(JobCancelledError):
            await handle.wait()
    assert board.saw_cancelled == 1
    job = await runner.get_job(handle.id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED


async def test_lingering_threads_keep_their_slots_so_concurrency_is_never_exceeded(
    autojump_clock: Any, board: Board
) -> None:
    def lingering(job: Job[Any], ctx: JobContext[Any]) -> str:
        board.enter()
        try:
            board.poll_for(lambda: board.release or ctx.cancelled)
            if ctx.cancelled:
                board.update(saw_cancelled=board.saw_cancelled + 1)
                board.wait_for(lambda: board.release)  # ignores the cancel a while
            return job.payload
        finally:
            board.leave()

    async with JobRunner(concurrency=2, default_retry=NO_RETRY) as runner:
        runner.register_handler("lingering", lingering)
        first = [await runner.submit("lingering", i, timeout=1.0) for i in range(2)]
        # No timeout: while their threads run, every task is blocked and the virtual
        # clock would jump to any deadline they had (however long, in real time).
        rest = [await runner.submit("lingering", i, timeout=math.inf) for i in range(2, 6)]
        # Both first attempts timed out and saw it; their threads have not returned.
        await board.until(lambda: board.saw_cancelled == 2)
        await trio.testing.wait_all_tasks_blocked()
        stats = await runner.stats()
        assert (stats.running, stats.pending, stats.timeout) == (2, 4, 0)
        assert board.started == 2
        board.update(release=True)
        for handle in first:
            with pytest.raises(JobTimeoutError):
                await handle.wait()
        assert [await handle.wait() for handle in rest] == [2, 3, 4, 5]
    assert board.most_live == 2
    assert board.started == 6


# -- the context from a thread --------------------------------------------------------


async def test_progress_and_metadata_from_the_thread_reach_the_store_and_listeners(
    board: Board, store_factory: Any
) -> None:
    def reporting(job: Job[Any], ctx: JobContext[Any]) -> str:
        ctx.report_progress(50, "half way")
        ctx.update_metadata({"rows": 10})
        ctx.log.info("logged from the thread")
        board.enter()
        board.wait_for(lambda: board.release)
        ctx.report_progress(100)
        return "ok"

    progress: list[tuple[float | None, str | None]] = []
    with trio.fail_after(60):
        async with JobRunner(storage=store_factory(), poll_interval=0.05) as runner:
            runner.on(
                "job:progress", lambda job: progress.append((job.progress, job.progress_message))
            )
            runner.register_handler("reporting", reporting)
            handle = await runner.submit("reporting", metadata={"source": "test"})
            await board.until(lambda: board.started == 1)
            while True:  # the store is written in the background
                job = await runner.get_job(handle.id)
                assert job is not None
                if job.progress == 50.0 and "rows" in job.metadata:
                    break
                await trio.sleep(0.01)
            assert job.progress_message == "half way"
            assert job.metadata == {"source": "test", "rows": 10}
            board.update(release=True)
            assert await handle.wait() == "ok"
    assert progress == [(50.0, "half way"), (100.0, None)]


async def test_progress_from_the_thread_is_checked_in_the_thread(board: Board) -> None:
    errors: list[BaseException] = []

    def bad(job: Job[Any], ctx: JobContext[Any]) -> None:
        for call in (lambda: ctx.report_progress(101), lambda: ctx.update_metadata([1])):
            try:
                call()
            except (ValueError, TypeError) as exc:
                errors.append(exc)

    async with JobRunner() as runner:
        runner.register_handler("bad", bad)
        await (await runner.submit("bad")).wait()
    assert [type(e) for e in errors] == [ValueError, TypeError]


# -- what counts as a handler ---------------------------------------------------------


class AsyncCallable:
    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> int:
        await trio.lowlevel.checkpoint()
        return threading.get_ident()


class SyncCallable:
    def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> int:
        return threading.get_ident()


async def async_ident(offset: int, job: Job[Any], ctx: JobContext[Any]) -> int:
    await trio.lowlevel.checkpoint()
    return threading.get_ident() + offset


def sync_ident(offset: int, job: Job[Any], ctx: JobContext[Any]) -> int:
    return threading.get_ident() + offset


@pytest.mark.parametrize(
    ("handler", "in_thread"),
    [
        (AsyncCallable(), False),
        (functools.partial(async_ident, 0), False),
        (SyncCallable(), True),
        (functools.partial(sync_ident, 0), True),
    ],
    ids=["async-callable-object", "partial-of-async", "sync-callable-object", "partial-of-def"],
)
async def test_async_callables_run_in_the_loop_and_plain_ones_in_a_thread(
    handler: Any, in_thread: bool
) -> None:
    async with JobRunner() as runner:
        assert runner.register_handler("h", handler) is handler
        ident = await (await runner.submit("h")).wait()
    assert (ident != threading.get_ident()) is in_thread


def generator(job: Job[Any], ctx: JobContext[Any]) -> Iterator[int]:
    yield 1


async def async_generator(job: Job[Any], ctx: JobContext[Any]) -> Any:
    yield 1


@pytest.mark.parametrize(
    "handler", [42, None, generator, async_generator, functools.partial(generator)]
)
async def test_a_handler_neither_async_nor_plain_is_refused_at_registration(handler: Any) -> None:
    runner = JobRunner()
    with pytest.raises(TypeError, match="handler"):
        runner.register_handler("h", handler)
    assert runner.job_types == frozenset()


async def test_a_plain_callable_returning_an_awaitable_has_it_awaited_in_the_loop() -> None:
    async def fetch(job: Job[Any]) -> tuple[Any, int]:
        await trio.lowlevel.checkpoint()
        return job.payload, threading.get_ident()

    async with JobRunner() as runner:
        runner.register_handler("fetch", lambda job, ctx: fetch(job))
        payload, ident = await (await runner.submit("fetch", "x")).wait()
    assert (payload, ident) == ("x", threading.get_ident())
