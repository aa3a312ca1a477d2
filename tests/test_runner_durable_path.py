"""The runner's path for stores that are not in-process (durable ones), on a stand-in.

A wrapper around MemoryStorage that hides its in-process fast path makes the
runner treat it as a durable store, and lets a test hold its writes back.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_jobs import Job, JobContext, JobRunner, JobStatus, MemoryStorage

_IN_PROCESS_ONLY = {"claim_nowait", "settle_nowait", "save_nowait", "wake"}


class Durable:
    """MemoryStorage seen by the runner as a durable store (no in-process path)."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()

    def __getattr__(self, name: str) -> Any:
        if name in _IN_PROCESS_ONLY:
            raise AttributeError(name)
        return getattr(self.inner, name)


class SlowWrites(Durable):
    """A :class:`Durable` store whose settle() waits for a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def settle(self, job_id: str, **kwargs: Any) -> bool:
        await self.gate.wait()
        return await self.inner.settle(job_id, **kwargs)


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    pass


async def test_claims_stop_when_outcome_writes_fall_a_round_behind(autojump_clock: Any) -> None:
    store = SlowWrites()
    async with JobRunner(concurrency=2, storage=store) as runner:  # type: ignore[arg-type]
        runner.register_handler("noop", noop)
        try:
            for _ in range(20):
                await runner.submit("noop")
            await trio.sleep(60)  # leases (30 s) would have run out without heartbeats
            stats = await runner.stats()
            # Two slots and two outcome writes in flight beyond them: four jobs
            # claimed, however long the store takes; the rest wait in the store.
            assert (stats.running, stats.pending) == (4, 16)
            assert not await store.inner.rescue_expired()  # heartbeats cover them
        finally:
            store.gate.set()
    stats = await runner.stats()
    assert stats.completed == 20
    assert all(j.attempts == 1 for j in await store.inner.get_by_status(JobStatus.COMPLETED))


async def test_a_job_from_elsewhere_is_judged_by_the_workers_retry_predicate(
    autojump_clock: Any,
) -> None:
    from trio_jobs import JobClient, RetryConfig

    store = MemoryStorage()
    async with JobClient(store) as client:  # a producer: its policy has no predicate
        handle = await client.submit("flaky")
    never = RetryConfig(is_retryable=lambda error: False)
    async with JobRunner(storage=store, default_retry=never) as runner:

        @runner.handler("flaky")
        async def flaky(job: Job[Any], ctx: JobContext[Any]) -> None:
            raise ConnectionError("reset")  # retryable by the heuristics

    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 1)


async def test_a_runner_does_not_spin_on_jobs_of_types_it_does_not_handle() -> None:
    from trio_jobs import JobClient

    store = MemoryStorage()
    async with JobClient(store) as client:
        await client.submit("someone-elses")
    claims = 0
    claim_nowait = store.claim_nowait

    def counting_claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return claim_nowait(*args, **kwargs)

    store.claim_nowait = counting_claim  # type: ignore[method-assign]
    async with JobRunner(storage=store) as runner:
        runner.register_handler("mine", noop)
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        assert claims <= 3  # it claimed, found nothing of its types, and went to sleep
        await runner.stop()


class SlowFirstProgress(SlowWrites):
    """Its first progress write, and every settle, wait for the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.first = True

    async def record_progress(self, job_id: str, **kwargs: Any) -> bool:
        if self.first:
            self.first = False
            await self.gate.wait()
        return await self.inner.record_progress(job_id, **kwargs)


async def test_the_last_progress_reported_is_the_one_stored(autojump_clock: Any) -> None:
    store = SlowFirstProgress()
    async with JobRunner(storage=store) as runner:  # type: ignore[arg-type]

        @runner.handler("work")
        async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
            ctx.report_progress(10)
            await trio.sleep(1)  # the write of 10 is now in flight, held by the store
            ctx.report_progress(90, "almost")

        handle = await runner.submit("work")
        await trio.sleep(5)
        store.gate.set()
        await handle.wait()
    job = await handle.get_status()
    assert (job.progress, job.progress_message) == (90, "almost")


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


async def test_a_drain_reuses_the_attempt_tasks_instead_of_spawning_one_per_job() -> None:
    store = Durable()
    await store.inner.save_many([Job(id=f"j{i}", type="noop", payload=None) for i in range(200)])
    counter = SpawnCounter()
    runner = JobRunner(concurrency=10, storage=store)  # type: ignore[arg-type]
    runner.register_handler("noop", noop)
    trio.lowlevel.add_instrument(counter)
    try:
        with trio.fail_after(60):
            async with runner:
                await runner.join()
                assert (await runner.stats()).completed == 200
    finally:
        trio.lowlevel.remove_instrument(counter)
    # A round's tasks, parked once their outcomes are written, take the round after
    # next: about two rounds of tasks in all, and the runner's own few.
    assert counter.spawned <= 40, counter.spawned


class RoundTrips(Durable):
    """A :class:`Durable` store whose claims take a (virtual) round trip."""

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep(0.001)
        return await self.inner.claim(*args, **kwargs)


async def _stored(store: Durable, count: int) -> None:
    from trio_jobs import JobClient

    async with JobClient(store.inner) as client:
        for _ in range(count):
            await client.submit("noop")


async def test_join_returns_as_the_last_job_settles_not_a_poll_later(
    autojump_clock: Any,
) -> None:
    # The last settles wake join() before the claim that finds the store dry has
    # answered (a round trip later): that answer must wake it again, or it sleeps
    # for a poll_interval.
    store = RoundTrips()
    await _stored(store, 40)  # a multiple of the slots: the last full claim is not dry
    runner = JobRunner(concurrency=4, storage=store, poll_interval=5.0)  # type: ignore[arg-type]
    runner.register_handler("noop", noop)
    async with runner:
        start = trio.current_time()
        await runner.join()
        assert trio.current_time() - start < 1.0  # 11 claims of 1 ms, not 5 s more
        assert (await runner.stats()).completed == 40


@pytest.mark.parametrize("idle_first", [False, True])
async def test_a_handler_registered_in_the_block_claims_its_waiting_jobs_at_once(
    idle_first: bool, autojump_clock: Any
) -> None:
    # The handler comes while the runner's first claim (for no type yet) is out,
    # or once it waits for work: the jobs already stored must not wait for a poll.
    store = RoundTrips()
    await _stored(store, 3)
    starts: list[float] = []

    async def record(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append(trio.current_time())

    async with JobRunner(storage=store, poll_interval=5.0) as runner:  # type: ignore[arg-type]
        if idle_first:
            await trio.sleep(1.0)
        start = trio.current_time()
        runner.register_handler("noop", record)
        await runner.join()
    assert len(starts) == 3
    assert max(starts) - start < 1.0
