"""Chaos: hundreds of jobs with random priorities, failures, timeouts, cancellations
and delays, with several seeds. Every job must reach a final status, and every count
must agree: the store's stats, the events, the handles and the handlers' own records.

Time is virtual (``autojump_clock``), so a run covers minutes of job time in well
under a second of real time. Backoff jitter is off so that a seed replays the same
workload (Trio may still order simultaneous wake-ups differently).
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobCancelledError,
    JobContext,
    JobFailedError,
    JobHandle,
    JobPriority,
    JobRunner,
    JobStatus,
    JobTimeoutError,
    RetryConfig,
    RetryStrategy,
)

JOBS = 300
KINDS = ["ok", "ok", "ok", "flaky", "fail", "bad-input", "hang", "slow-once"]
EVENTS = [
    "job:submitted",
    "job:started",
    "job:progress",
    "job:completed",
    "job:failed",
    "job:retrying",
    "job:cancelled",
    "job:timeout",
]


class Chaos:
    """The handler, and what it saw: concurrency, attempts, timeouts, progress reports."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.running = 0
        self.most = 0
        self.attempts: Counter[str] = Counter()
        self.timeouts = 0
        self.progress_reports = 0

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        self.running += 1
        self.most = max(self.most, self.running)
        self.attempts[job.id] += 1
        try:
            return await self._work(job, ctx)
        except trio.Cancelled:
            if trio.current_time() >= ctx.deadline:
                self.timeouts += 1
            raise
        finally:
            self.running -= 1

    async def _work(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        kind, seconds, fail_until = job.payload
        ctx.report_progress(0.0)
        self.progress_reports += 1
        await trio.sleep(seconds)
        if kind == "flaky" and ctx.attempt <= fail_until:
            raise ConnectionError(f"flaky attempt {ctx.attempt}")
        if kind == "fail":
            raise RuntimeError("always broken")
        if kind == "bad-input":
            raise ValueError("invalid input")
        if kind == "hang" or (kind == "slow-once" and ctx.attempt == 1):
            await trio.sleep_forever()
        ctx.report_progress(100.0, "done")
        self.progress_reports += 1
        return job.id


def expected_end(kind: str, fail_until: int, max_attempts: int) -> tuple[JobStatus, int]:
    """The status and attempt count of a job nobody cancelled."""
    if kind == "ok":
        return JobStatus.COMPLETED, 1
    if kind == "flaky":
        if fail_until < max_attempts:
            return JobStatus.COMPLETED, fail_until + 1
        return JobStatus.FAILED, max_attempts
    if kind == "fail":
        return JobStatus.FAILED, max_attempts
    if kind == "bad-input":
        return JobStatus.FAILED, 1
    if kind == "hang":
        return JobStatus.TIMEOUT, max_attempts
    assert kind == "slow-once"
    return (JobStatus.COMPLETED, 2) if max_attempts >= 2 else (JobStatus.TIMEOUT, 1)


async def outcome_of(handle: JobHandle[Any]) -> JobStatus:
    try:
        result = await handle.wait()
    except JobCancelledError:
        return JobStatus.CANCELLED
    except JobTimeoutError:
        return JobStatus.TIMEOUT
    except JobFailedError:
        return JobStatus.FAILED
    assert result == handle.id
    return JobStatus.COMPLETED


@pytest.mark.parametrize("seed", range(8))
async def test_every_job_ends_and_every_count_agrees(seed: int, autojump_clock: Any) -> None:
    rng = random.Random(seed)
    concurrency = rng.choice([1, 3, 10, 25])
    chaos = Chaos(concurrency)
    events: Counter[str] = Counter()
    streamed: Counter[str] = Counter()
    plans: dict[str, tuple[str, int, int]] = {}
    handles: list[JobHandle[Any]] = []
    cancels: dict[str, list[bool]] = {}

    async def consume(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with runner.subscribe() as channel:
            task_status.started()
            async for event in channel:
                streamed[event.name] += 1

    async def submit_all(runner: JobRunner) -> None:
        for _ in range(JOBS):
            kind = rng.choice(KINDS)
            fail_until = rng.randint(1, 4)
            max_attempts = rng.randint(1, 4)
            handle = await runner.submit(
                "chaos",
                (kind, rng.uniform(0.0, 3.0), fail_until),
                priority=rng.choice(list(JobPriority)),
                delay=rng.uniform(0.0, 20.0) if rng.random() < 0.3 else 0.0,
                timeout=rng.uniform(3.5, 8.0),
                retry=RetryConfig(
                    max_attempts=max_attempts,
                    base_delay=rng.uniform(0.0, 4.0),
                    strategy=rng.choice(list(RetryStrategy)),
                    jitter=False,
                ),
            )
            handles.append(handle)
            plans[handle.id] = (kind, fail_until, max_attempts)
            await trio.sleep(rng.expovariate(10.0))

    async def cancel_some() -> None:
        while len(handles) < JOBS or rng.random() < 0.9:
            await trio.sleep(rng.expovariate(4.0))
            if handles:
                victim = rng.choice(handles)
                cancels.setdefault(victim.id, []).append(await victim.cancel())

    runner = JobRunner(concurrency=concurrency, poll_interval=rng.choice([0.5, 1.0, 1000.0]))
    runner.register_handler("chaos", chaos)
    for name in EVENTS:
        runner.on(name, functools.partial(lambda name, *args: events.update([name]), name))
    async with trio.open_nursery() as consumers:
        await consumers.start(consume)  # the channel ends when the runner stops
        async with runner, trio.open_nursery() as producers:
            producers.start_soon(submit_all, runner)
            producers.start_soon(cancel_some)

    # Every job is final, and its handle and record agree with its plan.
    jobs = [await runner.get_job(h.id) for h in handles]
    assert all(job is not None and job.status.is_final for job in jobs)
    statuses = Counter()
    for handle, job in zip(handles, jobs, strict=True):
        assert job is not None
        statuses[job.status] += 1
        assert await outcome_of(handle) is job.status
        assert job.attempts == chaos.attempts[job.id]
        kind, fail_until, max_attempts = plans[job.id]
        assert job.attempts <= max_attempts
        if any(cancels.get(job.id, [])):
            assert job.status is JobStatus.CANCELLED
        else:
            assert (job.status, job.attempts) == expected_end(kind, fail_until, max_attempts)
    assert chaos.most <= concurrency
    assert chaos.running == 0

    # The store's counts.
    stats = await runner.stats()
    assert (stats.pending, stats.running, stats.retrying) == (0, 0, 0)
    assert stats.total_processed == JOBS
    assert (stats.completed, stats.failed, stats.cancelled, stats.timeout) == (
        statuses[JobStatus.COMPLETED],
        statuses[JobStatus.FAILED],
        statuses[JobStatus.CANCELLED],
        statuses[JobStatus.TIMEOUT],
    )
    times = [j.execution_time for j in jobs if j and j.status is JobStatus.COMPLETED]
    if times:
        assert stats.average_execution_time == pytest.approx(math.fsum(times) / len(times))

    # The events' counts.
    attempts = sum(chaos.attempts.values())
    assert events["job:submitted"] == JOBS
    assert events["job:started"] == attempts
    assert events["job:completed"] == stats.completed
    assert events["job:failed"] == stats.failed
    assert events["job:cancelled"] == stats.cancelled
    assert events["job:timeout"] == chaos.timeouts
    assert events["job:progress"] == chaos.progress_reports
    # Every attempt ended one way: completed, failed, timed out for good, retried, or
    # cancelled while running (the other cancellations hit jobs that were waiting).
    cancelled_running = attempts - (
        stats.completed + stats.failed + stats.timeout + events["job:retrying"]
    )
    assert 0 <= cancelled_running <= stats.cancelled
    # The subscriber saw exactly what the callbacks saw, and the runner's own events.
    assert streamed == events + Counter({"runner:started": 1, "runner:stopped": 1})
    # Every kind of ending happened, or the test proves little.
    assert min(stats.completed, stats.failed, stats.cancelled, stats.timeout) > 0
