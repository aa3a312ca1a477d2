"""How jobs end, and what handles report: attempts, failures, retries, timeouts,
cancellation; waiting, status and reattaching by id.

Cancellation is tested both through ``runner.cancel(id)`` and ``handle.cancel()``.
Time is virtual (``autojump_clock``) and exact.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobCancelledError,
    JobContext,
    JobError,
    JobFailedError,
    JobHandle,
    JobNotFoundError,
    JobRunner,
    JobStatus,
    JobTimeoutError,
    RetryConfig,
    RetryStrategy,
)


class DiskError(Exception):
    pass


def fixed(seconds: float, attempts: int = 3) -> RetryConfig:
    return RetryConfig(
        max_attempts=attempts, base_delay=seconds, strategy=RetryStrategy.FIXED, jitter=False
    )


class Work:
    """A handler: ``payload = (name, seconds, fail_attempts)``; records starts/cancels."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []
        self.cancelled: list[tuple[str, float]] = []
        self.raised: list[BaseException] = []

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        name, seconds, fail_attempts = job.payload
        self.starts.append((name, trio.current_time()))
        if ctx.attempt <= fail_attempts:
            error = DiskError(f"disk on fire #{ctx.attempt}")
            self.raised.append(error)
            raise error
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.cancelled.append((name, trio.current_time()))
            raise
        return f"{name} done"


async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
    return job.payload


async def sleep_for(job: Job[Any], ctx: JobContext[Any]) -> float:
    """Sleep ``job.payload`` seconds and return the time it finished."""
    await trio.sleep(job.payload)
    return trio.current_time()


# -- attempts, failures, timeouts -------------------------------------------------


async def test_attempts_grow_by_one_when_each_attempt_starts(autojump_clock: Any) -> None:
    seen: list[tuple[int, int, JobStatus]] = []

    async def flaky(job: Job[Any], ctx: JobContext[Any]) -> str:
        seen.append((ctx.attempt, job.attempts, job.status))
        if job.attempts < 3:
            raise RuntimeError("try again")
        return "done"

    async with JobRunner(default_retry=fixed(1.0, attempts=5)) as runner:
        runner.register_handler("flaky", flaky)
        handle = await runner.submit("flaky")
        assert await handle.wait() == "done"
        job = await handle.get_status()
    assert seen == [(n, n, JobStatus.RUNNING) for n in (1, 2, 3)]
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 3)


async def test_an_exception_is_retried_with_exact_backoff_then_fails(
    autojump_clock: Any,
) -> None:
    starts: list[float] = []

    async def broken(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append(trio.current_time())
        raise RuntimeError(f"boom {ctx.attempt}")

    config = RetryConfig(max_attempts=4, base_delay=1.0, backoff_multiplier=2.0, jitter=False)
    async with JobRunner(default_retry=config) as runner:
        runner.register_handler("broken", broken)
        runner.register_handler("echo", echo)
        handle = await runner.submit("broken")
        with pytest.raises(JobFailedError):
            await handle.wait()
        # The failures never reached the runner: it still runs jobs.
        assert runner.running
        assert await (await runner.submit("echo", "alive")).wait() == "alive"
        job = await handle.get_status()
    assert starts == [0.0, 1.0, 3.0, 7.0]
    assert (job.status, job.attempts, job.result) == (JobStatus.FAILED, 4, None)
    error = job.last_error
    assert error is not None
    assert (error.message, error.type, error.attempt, error.retryable) == (
        "boom 4",
        "RuntimeError",
        4,
        True,
    )
    assert error.traceback is not None
    assert "RuntimeError: boom 4" in error.traceback
    assert error.timestamp.utcoffset() == timedelta(0)
    assert job.completed_at is not None


async def test_a_non_retryable_error_is_not_retried(autojump_clock: Any) -> None:
    calls = 0

    async def picky(job: Job[Any], ctx: JobContext[Any]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("invalid input: no name")

    async with JobRunner() as runner:
        runner.register_handler("picky", picky)
        handle = await runner.submit("picky")
        with pytest.raises(JobFailedError):
            await handle.wait()
        job = await handle.get_status()
    assert calls == 1
    assert (job.status, job.attempts, trio.current_time()) == (JobStatus.FAILED, 1, 0.0)
    assert job.last_error is not None
    assert (job.last_error.type, job.last_error.retryable) == ("ValueError", False)


async def test_the_jobs_is_retryable_predicate_decides(autojump_clock: Any) -> None:
    calls = 0

    async def broken(job: Job[Any], ctx: JobContext[Any]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("reset")

    async with JobRunner() as runner:
        runner.register_handler("broken", broken)
        handle = await runner.submit("broken", retry={"is_retryable": lambda e: False})
        with pytest.raises(JobFailedError):
            await handle.wait()
    assert calls == 1


async def test_a_timeout_cancels_the_attempt_and_is_retried_until_timeout(
    autojump_clock: Any,
) -> None:
    spans: list[tuple[float, float]] = []

    async def hang(job: Job[Any], ctx: JobContext[Any]) -> None:
        start = trio.current_time()
        try:
            await trio.sleep_forever()
        finally:
            spans.append((start, trio.current_time()))

    async with JobRunner(default_retry=fixed(1.0, attempts=2)) as runner:
        runner.register_handler("hang", hang)
        handle = await runner.submit("hang", timeout=5.0)
        with pytest.raises(JobTimeoutError):
            await handle.wait()
        assert trio.current_time() == 11.0
        job = await handle.get_status()
    assert spans == [(0.0, 5.0), (6.0, 11.0)]
    assert (job.status, job.attempts) == (JobStatus.TIMEOUT, 2)
    assert job.last_error is not None
    assert job.last_error.type.endswith("JobTimeoutError")
    assert job.last_error.attempt == 2


async def test_a_timed_out_attempt_counts_and_the_retry_may_succeed(autojump_clock: Any) -> None:
    async def slow_once(job: Job[Any], ctx: JobContext[Any]) -> str:
        if ctx.attempt == 1:
            await trio.sleep_forever()
        return "second time lucky"

    async with JobRunner(default_retry=fixed(2.0)) as runner:
        runner.register_handler("slow", slow_once)
        handle = await runner.submit("slow", timeout=3.0)
        assert await handle.wait() == "second time lucky"
        assert trio.current_time() == 5.0
        job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 2)


async def test_a_timeout_follows_the_retry_predicate(autojump_clock: Any) -> None:
    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("sleep", sleep_for)
        handle = await runner.submit(
            "sleep", 100.0, timeout=2.0, retry={"is_retryable": lambda e: False}
        )
        with pytest.raises(JobTimeoutError):
            await handle.wait()
        job = await handle.get_status()
    assert (job.status, job.attempts, trio.current_time()) == (JobStatus.TIMEOUT, 1, 2.0)


async def test_execution_time_is_the_last_attempts_on_the_trio_clock(autojump_clock: Any) -> None:
    async def slow_then_fast(job: Job[Any], ctx: JobContext[Any]) -> str:
        await trio.sleep(3.0 if ctx.attempt == 1 else 1.25)
        if ctx.attempt == 1:
            raise ConnectionError("reset")
        return "ok"

    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", slow_then_fast)
        handle = await runner.submit("w")
        await trio.sleep(3.5)
        assert (await handle.get_status()).execution_time == 3.0
        assert await handle.wait() == "ok"
        job = await handle.get_status()
    assert (job.execution_time, job.attempts) == (1.25, 2)
    assert job.started_at is not None
    assert job.completed_at is not None
    assert job.started_at <= job.completed_at


# -- wait() -----------------------------------------------------------------------


async def test_wait_returns_the_result(autojump_clock: Any) -> None:
    async with JobRunner(poll_interval=1000.0) as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 2.0, 0))
        assert (handle.type, isinstance(handle.id, str)) == ("w", True)
        assert await handle.wait() == "a done"
        # Woken by the completion itself, not by a poll.
        assert trio.current_time() == 2.0


async def test_wait_raises_job_failed_with_the_original_cause(autojump_clock: Any) -> None:
    work = Work()
    async with JobRunner(default_retry=fixed(1.0)) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", ("a", 0.0, 3))
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
    error = info.value
    assert isinstance(error, JobError)
    # The cause is the very exception the last attempt raised.
    assert error.__cause__ is work.raised[-1]
    assert len(work.raised) == 3
    assert "disk on fire #3" in str(error)
    assert error.error_info.message == "disk on fire #3"
    assert error.error_info.type.endswith("DiskError")
    assert (error.error_info.attempt, error.error_info.retryable) == (3, True)
    assert error.error_info == (await handle.get_status()).last_error


async def test_wait_raises_job_cancelled() -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 0.0, 0), delay=10.0)
        await handle.cancel()
        with pytest.raises(JobCancelledError) as info:
            await handle.wait()
    assert isinstance(info.value, JobError)


async def test_wait_raises_job_timeout_which_is_a_timeout_error(autojump_clock: Any) -> None:
    async with JobRunner(default_retry=fixed(0.0, attempts=1)) as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 10.0, 0), timeout=4.0)
        with pytest.raises(TimeoutError) as info:
            await handle.wait()
        assert trio.current_time() == 4.0
    assert isinstance(info.value, JobTimeoutError)
    assert isinstance(info.value, JobError)


async def test_many_tasks_wait_on_one_job(autojump_clock: Any) -> None:
    results: list[tuple[str, float]] = []

    async def waiter(handle: JobHandle[str]) -> None:
        results.append((await handle.wait(), trio.current_time()))

    async with JobRunner(default_retry=fixed(2.0)) as runner:
        runner.register_handler("w", Work())
        # Delayed, then failing once: waiters see neither PENDING nor RETRYING as an end.
        handle = await runner.submit("w", ("a", 3.0, 1), delay=1.0)
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(waiter, handle)
            for _ in range(10):
                other = await runner.get_handle(handle.id)
                nursery.start_soon(waiter, other)
    assert results == [("a done", 6.0)] * 60


async def test_a_finished_job_answers_at_once(autojump_clock: Any) -> None:
    async with JobRunner(poll_interval=1000.0) as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 1.0, 0))
        await runner.join()
        assert trio.current_time() == 1.0
        assert await handle.wait() == "a done"
        assert await (await runner.get_handle(handle.id)).wait() == "a done"
        assert trio.current_time() == 1.0


async def test_a_cancelled_waiter_disturbs_nothing(autojump_clock: Any) -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 5.0, 0))
        with trio.move_on_after(1.0) as scope:
            await handle.wait()
        assert scope.cancelled_caught
        assert await handle.wait() == "a done"
        assert trio.current_time() == 5.0


# -- status -----------------------------------------------------------------------


async def test_get_status_and_is_done_follow_the_job(autojump_clock: Any) -> None:
    async with JobRunner(default_retry=fixed(10.0)) as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 2.0, 1), delay=1.0)
        seen = []
        for moment in (0.5, 1.5, 11.5, 20.0):
            await trio.sleep(moment - trio.current_time())
            job = await handle.get_status()
            assert isinstance(job, Job)
            assert job.id == handle.id
            seen.append((job.status, job.attempts, await handle.is_done()))
            if job.status is JobStatus.RETRYING:
                # run_at: the wall-clock estimate of the end of the 10 s backoff.
                assert job.run_at is not None
                assert job.last_error is not None
                waited = (job.run_at - job.last_error.timestamp).total_seconds()
                assert abs(waited - 10.0) < 1.0
    assert seen == [
        (JobStatus.PENDING, 0, False),
        (JobStatus.RETRYING, 1, False),
        (JobStatus.RUNNING, 2, False),
        (JobStatus.COMPLETED, 2, True),
    ]


@pytest.mark.parametrize(
    ("payload", "kwargs", "status"),
    [
        (("a", 0.0, 0), {}, JobStatus.COMPLETED),
        (("a", 0.0, 9), {}, JobStatus.FAILED),
        (("a", 9.0, 0), {"timeout": 1.0}, JobStatus.TIMEOUT),
        (("a", 0.0, 0), {"delay": 5.0}, JobStatus.CANCELLED),
    ],
)
async def test_is_done_for_every_final_status(
    payload: Any, kwargs: dict[str, Any], status: JobStatus, autojump_clock: Any
) -> None:
    async with JobRunner(default_retry=fixed(0.0, attempts=1)) as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", payload, **kwargs)
        if status is JobStatus.CANCELLED:
            await handle.cancel()
        await runner.join()
        assert (await handle.get_status()).status is status
        assert await handle.is_done()


async def test_get_handle_reattaches_by_id_and_rejects_unknown_ids() -> None:
    async with JobRunner() as runner:
        runner.register_handler("w", Work())
        handle = await runner.submit("w", ("a", 0.0, 0))
        again = await runner.get_handle(handle.id)
        assert (again.id, again.type) == (handle.id, "w")
        assert await again.wait() == "a done"
        with pytest.raises(JobNotFoundError) as info:
            await runner.get_handle("no-such-job")
        assert isinstance(info.value, LookupError)
        assert isinstance(info.value, JobError)


# -- cancel -----------------------------------------------------------------------


@pytest.fixture(params=["runner", "handle"])
def cancel(request: pytest.FixtureRequest) -> Any:
    """Cancel a job through ``runner.cancel(id)`` or through ``handle.cancel()``."""

    async def by_runner(runner: JobRunner, handle: JobHandle[Any]) -> bool:
        return await runner.cancel(handle.id)

    async def by_handle(runner: JobRunner, handle: JobHandle[Any]) -> bool:
        return await handle.cancel()

    return by_runner if request.param == "runner" else by_handle


async def test_cancel_a_pending_job_at_once(cancel: Any, autojump_clock: Any) -> None:
    work = Work()
    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("w", work)
        await runner.submit("w", ("blocker", 5.0, 0))
        queued = await runner.submit("w", ("queued", 1.0, 0))
        delayed = await runner.submit("w", ("delayed", 1.0, 0), delay=2.0)
        await trio.sleep(1.0)
        assert await cancel(runner, queued)
        assert await cancel(runner, delayed)
        for handle in (queued, delayed):
            job = await handle.get_status()
            assert job.status is JobStatus.CANCELLED
            assert job.completed_at is not None
            with pytest.raises(JobCancelledError):
                await handle.wait()
        assert trio.current_time() == 1.0
    assert work.starts == [("blocker", 0.0)]


async def test_cancel_a_retrying_job_at_once(cancel: Any, autojump_clock: Any) -> None:
    work = Work()
    async with JobRunner(default_retry=fixed(10.0)) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", ("a", 0.0, 1))
        await trio.sleep(1.0)
        assert (await handle.get_status()).status is JobStatus.RETRYING
        assert await cancel(runner, handle)
        job = await handle.get_status()
        assert (job.status, job.attempts, trio.current_time()) == (JobStatus.CANCELLED, 1, 1.0)
        await trio.sleep(20.0)
    assert work.starts == [("a", 0.0)]


async def test_cancel_a_running_job_cancels_its_scope(cancel: Any, autojump_clock: Any) -> None:
    work = Work()
    ended: list[float] = []

    async def waiter(handle: JobHandle[Any]) -> None:
        with pytest.raises(JobCancelledError):
            await handle.wait()
        ended.append(trio.current_time())

    async with JobRunner(concurrency=1) as runner:
        runner.register_handler("w", work)
        handle = await runner.submit("w", ("a", 100.0, 0))
        nxt = await runner.submit("w", ("next", 1.0, 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, handle)
            await trio.sleep(3.0)
            assert await cancel(runner, handle)
        job = await handle.get_status()
        assert await nxt.wait() == "next done"
    assert work.cancelled == [("a", 3.0)]
    assert ended == [3.0]
    assert (job.status, job.attempts) == (JobStatus.CANCELLED, 1)
    # Not retried, and the slot went to the next job at once.
    assert work.starts == [("a", 0.0), ("next", 3.0)]


async def test_a_cancelled_job_that_returns_anyway_ends_cancelled(
    cancel: Any, autojump_clock: Any
) -> None:
    async def stubborn(job: Job[Any], ctx: JobContext[Any]) -> str:
        with trio.CancelScope(shield=True):
            await trio.sleep(5.0)
        return "finished anyway"

    async with JobRunner() as runner:
        runner.register_handler("stubborn", stubborn)
        handle = await runner.submit("stubborn")
        await trio.sleep(1.0)
        assert await cancel(runner, handle)
        with pytest.raises(JobCancelledError):
            await handle.wait()
        assert trio.current_time() == 5.0


async def test_cancel_returns_false_for_unknown_and_final_jobs(
    cancel: Any, autojump_clock: Any
) -> None:
    async with JobRunner(default_retry=fixed(0.0, attempts=1)) as runner:
        runner.register_handler("w", Work())
        handles = [
            await runner.submit("w", ("done", 0.0, 0)),
            await runner.submit("w", ("failed", 0.0, 1)),
            await runner.submit("w", ("timeout", 5.0, 0), timeout=1.0),
            await runner.submit("w", ("cancelled", 0.0, 0), delay=1.0),
        ]
        assert await cancel(runner, handles[-1])
        await runner.join()
        for handle in handles:
            assert not await cancel(runner, handle)
        assert [(await h.get_status()).status for h in handles] == [
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.TIMEOUT,
            JobStatus.CANCELLED,
        ]
        assert not await runner.cancel("no-such-job")
