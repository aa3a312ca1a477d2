"""The engine's promises under faults (API.md), one regression test per defect of issue 11.

Each of these failed on the scheduler before the redesign (the defect number is in
the test's docstring). The randomized fault-injection test is in test_faults.py.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from conftest import PG_DSN
from trio_jobs import (
    Job,
    JobContext,
    JobFailedError,
    JobRunner,
    JobStatus,
    MemoryStorage,
    PostgresStorage,
    RetryConfig,
    RetryStrategy,
    SQLiteStorage,
)
from trio_jobs.storage import Heartbeat

_IN_PROCESS_ONLY = {"claim_nowait", "settle_nowait", "save_nowait", "wake"}


class Durable:
    """MemoryStorage seen by the runner as a durable store, with faults one can switch on.

    Hiding the in-process fast path sends every call through the async protocol, where
    the runner keeps leases, fences and retried writes as for SQLite and PostgreSQL;
    the Trio clock still drives everything (``autojump_clock``).
    """

    def __init__(self, **kwargs: Any) -> None:
        self.inner = MemoryStorage(**kwargs)
        self.heartbeat_fails = False
        self.settle_failures = 0
        self.settles: list[JobStatus] = []
        #: When set, claims wait for it uncancellably (like a claim in a worker thread).
        self.claim_gate: trio.Event | None = None
        self.claim_in_flight = trio.Event()

    async def claim(self, worker_id: str, limit: int, job_types: Any = None) -> list[Job[Any]]:
        gate = self.claim_gate
        if gate is not None:
            with trio.CancelScope(shield=True):
                self.claim_in_flight.set()
                await gate.wait()
                return await self.inner.claim(worker_id, limit, job_types)
        return await self.inner.claim(worker_id, limit, job_types)

    def __getattr__(self, name: str) -> Any:
        if name in _IN_PROCESS_ONLY:
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def heartbeat(self, worker_id: str, job_ids: Any) -> Heartbeat:
        if self.heartbeat_fails:
            await trio.lowlevel.checkpoint()
            raise OSError("connection reset (injected)")
        return await self.inner.heartbeat(worker_id, job_ids)

    async def settle(self, job_id: str, **kwargs: Any) -> bool:
        self.settles.append(kwargs["status"])
        if self.settle_failures:
            self.settle_failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError("server closed the connection unexpectedly (injected)")
        return await self.inner.settle(job_id, **kwargs)


class LiveAttempts:
    """A handler's bookkeeping of its own attempts: how many of one job run at once."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most = 0
        self.spans: list[tuple[int, float, float]] = []

    async def run(self, job: Job[Any], ctx: JobContext[Any], body: Any) -> Any:
        self.now[job.id] += 1
        self.most = max(self.most, self.now[job.id])
        start = trio.current_time()
        try:
            return await body()
        finally:
            self.now[job.id] -= 1
            self.spans.append((ctx.attempt, start, trio.current_time()))


async def sleep_long() -> None:
    await trio.sleep(100.0)


# -- 2: one live attempt per job -------------------------------------------------


async def test_an_attempt_whose_lease_cannot_be_renewed_is_cancelled_before_it_expires(
    autojump_clock: Any,
) -> None:
    """Defect 2: renewals failed, the lease ran out, the job was rescued and ran twice."""
    store = Durable(lease_duration=3.0)
    live = LiveAttempts()

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        await live.run(job, ctx, sleep_long)

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("w", work)
        handle = await runner.submit("w")
        await trio.sleep(0.1)
        store.heartbeat_fails = True
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
    assert live.most == 1
    # Three attempts, each cancelled by the runner itself before its 3 s lease could
    # run out (at 80 % of it), none overlapping the next.
    assert [attempt for attempt, _, _ in live.spans] == [1, 2, 3]
    for (_, _start, end), (_, next_start, _) in zip(live.spans, live.spans[1:], strict=False):
        assert end <= next_start
    assert all(end - start < 3.0 for _, start, end in live.spans)
    # Nothing was written for them: the store's rescue counted each, as for a lost worker.
    assert store.settles == []
    assert info.value.error_info.type == "WorkerLostError"
    assert (await handle.get_status()).attempts == 3


async def test_a_second_attempt_in_one_runner_waits_for_the_first_to_end(
    autojump_clock: Any,
) -> None:
    """Defect 2: the index was keyed by job id, so a re-claim overwrote the old attempt."""
    store = Durable(lease_duration=3.0)
    live = LiveAttempts()

    async def stubborn(job: Job[Any], ctx: JobContext[Any]) -> str:
        async def body() -> str:
            if ctx.attempt == 1:
                with trio.CancelScope(shield=True):  # ignores its fence for 10 s
                    await trio.sleep(10.0)
            return f"attempt {ctx.attempt}"

        return await live.run(job, ctx, body)

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("w", stubborn)
        handle = await runner.submit("w")
        await trio.sleep(0.1)
        store.heartbeat_fails = True
        await trio.sleep(4.0)  # the lease ran out; the store rescued the job
        store.heartbeat_fails = False
        assert await handle.wait() == "attempt 2"
    assert live.most == 1
    assert [attempt for attempt, _, _ in live.spans] == [1, 2]
    (_, _, first_end), (_, second_start, _) = live.spans
    assert first_end == second_start == 10.0


# -- 3: PostgreSQL, an immediate retry while the first settle is in flight ----------


@pytest.mark.slow
async def test_an_immediate_retry_on_postgres_never_crashes_the_runner(pg_schema: str) -> None:
    """Defect 3: the retry was claimed while the first settle was written (KeyError)."""

    async def fail(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise ConnectionError("upstream is down")

    store = PostgresStorage(PG_DSN, schema=pg_schema)
    policy = RetryConfig(max_attempts=2, strategy=RetryStrategy.IMMEDIATE)
    with trio.fail_after(60):
        async with JobRunner(storage=store, poll_interval=0.05, default_retry=policy) as runner:
            runner.register_handler("fail", fail)
            handles = [await runner.submit("fail", i) for i in range(40)]
        async with PostgresStorage(PG_DSN, schema=pg_schema) as check:
            jobs = [await check.get(h.id) for h in handles]
    assert [(j.status, j.attempts) for j in jobs if j is not None] == [(JobStatus.FAILED, 2)] * 40


# -- 7: bounded memory -----------------------------------------------------------


async def test_a_failed_jobs_kept_error_keeps_no_frames_alive(autojump_clock: Any) -> None:
    """Defect 7: the kept exception's traceback held every frame's locals."""

    class Buffer:
        pass

    refs: list[weakref.ref[Buffer]] = []

    async def fail(job: Job[Any], ctx: JobContext[Any]) -> None:
        buffer = Buffer()  # a large local, in real life
        refs.append(weakref.ref(buffer))
        raise ValueError("invalid input")

    async with JobRunner() as runner:
        runner.register_handler("fail", fail)
        handle = await runner.submit("fail")
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
    assert isinstance(info.value.__cause__, ValueError)  # still the original error
    assert info.value.error_info.traceback is not None
    assert "raise ValueError" in info.value.error_info.traceback  # its text is kept
    del info
    gc.collect()
    assert refs[0]() is None


async def test_retry_predicates_are_not_kept_once_jobs_are_final(tmp_path: Path) -> None:
    """Defect 7: a predicate policy was kept for every job submitted, forever."""

    def predicate(error: BaseException) -> bool:
        return True

    async def work(job: Job[Any], ctx: JobContext[Any]) -> int:
        await trio.lowlevel.checkpoint()
        return 1

    ref = weakref.ref(predicate)
    store = SQLiteStorage(tmp_path / "jobs.db")
    with trio.fail_after(30):
        async with JobRunner(storage=store, poll_interval=0.05) as runner:
            runner.register_handler("w", work)
            for _ in range(20):
                await runner.submit("w", retry={"is_retryable": predicate})
    assert (await runner.stats()).completed == 20
    del predicate
    gc.collect()
    assert ref() is None  # the runner (still referenced here) let go of it


# -- 11: an operator's update of a running job -----------------------------------


async def test_a_running_job_updated_to_final_is_not_rescued(autojump_clock: Any) -> None:
    """Defect 11: MemoryStorage.update left the lease behind; rescue resurrected the job."""
    store = MemoryStorage(lease_duration=5.0)
    await store.save(Job(id="j", type="t"))
    [running] = await store.claim("worker", 1)
    from trio_jobs._records import replace

    await store.update(replace(running, status=JobStatus.COMPLETED, result="by hand"))
    await trio.sleep(10.0)
    assert await store.rescue_expired() == []
    job = await store.get("j")
    assert job is not None
    assert (job.status, job.result) == (JobStatus.COMPLETED, "by hand")


# -- 12: update_metadata is not progress ------------------------------------------


async def test_update_metadata_emits_no_progress_event(autojump_clock: Any) -> None:
    """Defect 12: ctx.update_metadata emitted job:progress (API.md: no event)."""
    seen: list[tuple[float | None, dict[str, Any]]] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.update_metadata({"step": 1})
        ctx.report_progress(50.0)
        ctx.update_metadata({"step": 2})

    async with JobRunner() as runner:
        runner.register_handler("w", work)
        runner.on("job:progress", lambda job: seen.append((job.progress, dict(job.metadata))))
        handle = await runner.submit("w")
        await handle.wait()
    assert seen == [(50.0, {"step": 1})]
    assert (await handle.get_status()).metadata == {"step": 2}


# -- store errors are retried, not dropped ---------------------------------------


async def test_a_settle_that_fails_is_retried_while_the_lease_holds(autojump_clock: Any) -> None:
    store = Durable()
    store.settle_failures = 3
    runs = 0

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        nonlocal runs
        runs += 1
        await trio.sleep(1.0)
        return "done"

    async with JobRunner(storage=store) as runner:  # type: ignore[arg-type]
        runner.register_handler("w", work)
        handle = await runner.submit("w")
        assert await handle.wait() == "done"
    assert runs == 1
    assert store.settles == [JobStatus.COMPLETED] * 4
    # Backoff 0.05, 0.1 and 0.2 s after the handler's 1 s.
    assert trio.current_time() == pytest.approx(1.0 + 0.35)


async def test_a_settle_that_keeps_failing_leaves_the_job_to_rescue(autojump_clock: Any) -> None:
    store = Durable(lease_duration=3.0)
    store.settle_failures = 10_000
    runs = 0

    async def work(job: Job[Any], ctx: JobContext[Any]) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            store.heartbeat_fails = True  # the store is going away: no renewals either
        return "done"

    with trio.fail_after(60):
        async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
            runner.register_handler("w", work)
            handle = await runner.submit("w")
            await trio.sleep(5.0)
            # Tried while the lease held, then given up: the attempt task ended and
            # the block is not held up by it.
            assert 3 <= len(store.settles) < 20
            store.settle_failures = 0
            store.heartbeat_fails = False
            assert await handle.wait() == "done"
    job = await handle.get_status()
    # The store rescued the job (the first attempt counted) and it ran again.
    assert (job.status, job.attempts, runs) == (JobStatus.COMPLETED, 2, 2)


# -- user callbacks cannot break the runner --------------------------------------


async def test_a_raising_retry_predicate_is_logged_and_the_heuristics_decide(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(error: BaseException) -> bool:
        raise AttributeError("predicate bug")

    async def fail(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise ValueError(job.payload)

    reported: list[BaseException] = []
    policy = RetryConfig(base_delay=1.0, jitter=False, is_retryable=broken)
    async with JobRunner(default_retry=policy) as runner:
        runner.register_handler("fail", fail)
        runner.on("runner:error", reported.append)
        transient = await runner.submit("fail", "service unavailable")
        permanent = await runner.submit("fail", "invalid input")
        for handle in (transient, permanent):
            with pytest.raises(JobFailedError):
                await handle.wait()
    # The heuristics: "service unavailable" is retried, "invalid input" is not.
    assert (await transient.get_status()).attempts == 3
    assert (await permanent.get_status()).attempts == 1
    assert len(reported) == 4
    assert all(isinstance(e, AttributeError) for e in reported)
    assert "predicate bug" in caplog.text


async def test_stop_timing_is_unaffected_by_deadlines(autojump_clock: Any) -> None:
    # A guard for the fence: on an in-process store attempts have none, so a long job
    # is never cancelled by lease bookkeeping.
    async def long(job: Job[Any], ctx: JobContext[Any]) -> float:
        await trio.sleep(1000.0)
        return ctx.deadline

    async with JobRunner(default_timeout=None) as runner:
        runner.register_handler("long", long)
        assert await (await runner.submit("long")).wait() == math.inf
    assert trio.current_time() == 1000.0


# -- one scope per attempt: timeout, fence and write ----------------------------


async def test_on_a_durable_store_ctx_deadline_is_the_timeout_not_the_lease(
    autojump_clock: Any,
) -> None:
    store = Durable(lease_duration=3.0)
    seen: list[float] = []

    async def long(job: Job[Any], ctx: JobContext[Any]) -> str:
        seen.append(ctx.deadline - trio.current_time())
        await trio.sleep(20.0)  # far past the 3 s lease: renewals keep it held
        seen.append(ctx.deadline)
        return "done"

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("long", long)
        handle = await runner.submit("long", timeout=100.0)
        assert await handle.wait() == "done"
    assert seen[0] == 100.0
    assert seen[1] == seen[0] + (trio.current_time() - 20.0)  # unchanged by renewals
    assert (await handle.get_status()).attempts == 1


async def test_a_handler_that_moves_its_deadline_keeps_it_across_renewals(
    autojump_clock: Any,
) -> None:
    store = Durable(lease_duration=3.0)

    async def extend(job: Job[Any], ctx: JobContext[Any]) -> float:
        ctx.cancel_scope.deadline += 10.0  # 5 s timeout -> 15 s
        await trio.sleep(12.0)
        return ctx.deadline

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("extend", extend)
        handle = await runner.submit("extend", timeout=5.0)
        deadline = await handle.wait()
    assert deadline == 15.0
    assert (await handle.get_status()).status is JobStatus.COMPLETED


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
async def test_a_handler_that_cancels_itself_then_raises_fails_rather_than_times_out(
    durable: bool, autojump_clock: Any
) -> None:
    async def give_up(job: Job[Any], ctx: JobContext[Any]) -> None:
        ctx.cancel_scope.cancel()
        try:
            await trio.sleep(1.0)
        finally:
            raise ValueError("invalid input: gave up")

    store: Any = Durable() if durable else MemoryStorage()
    async with JobRunner(storage=store) as runner:
        runner.register_handler("w", give_up)
        handle = await runner.submit("w")
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
    assert info.value.error_info.type == "ValueError"
    assert (await handle.get_status()).status is JobStatus.FAILED


# -- 8: stop() from inside a handler ---------------------------------------------


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "forced"])
async def test_stop_from_a_handler_while_the_block_drains_ends_the_block(
    graceful: bool, autojump_clock: Any
) -> None:
    """Found by the fault-injection test: the drain waited for a job given back by stop."""
    runner = JobRunner()
    other_done = trio.Event()

    async def stopper(job: Job[Any], ctx: JobContext[Any]) -> str:
        await trio.sleep(1.0)
        await runner.stop(graceful=graceful)  # a forced stop cancels this attempt too
        return "stopped"

    async def other(job: Job[Any], ctx: JobContext[Any]) -> None:
        await trio.sleep(2.0)
        other_done.set()

    with trio.fail_after(100):
        async with runner:
            runner.register_handler("stop", stopper)
            runner.register_handler("other", other)
            first = await runner.submit("stop")
            second = await runner.submit("other")
            waiting = await runner.submit("other", delay=50.0)
    stopped = await first.get_status()
    if graceful:
        # It waited for the other running attempt, not for itself, then returned.
        assert other_done.is_set()
        assert trio.current_time() == 2.0
        assert (stopped.status, await first.wait()) == (JobStatus.COMPLETED, "stopped")
        assert (await second.get_status()).status is JobStatus.COMPLETED
    else:
        assert trio.current_time() == 1.0
        assert (stopped.status, stopped.attempts) == (JobStatus.PENDING, 0)
        assert ((await second.get_status()).status, other_done.is_set()) == (
            JobStatus.PENDING,
            False,
        )
    assert (await waiting.get_status()).status is JobStatus.PENDING


# -- 4: a claim answered as the runner goes down gives its jobs back ----------------


async def test_a_claim_answered_while_the_runner_is_cancelled_gives_its_job_back(
    autojump_clock: Any,
) -> None:
    """Found by the fault-injection test: that give-back was written unshielded."""
    store = Durable()
    ran: list[str] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ran.append(job.id)

    async def answer_the_claim_once_all_wait() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert store.claim_gate is not None
        store.claim_gate.set()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as outer:
            async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
                runner.register_handler("w", work)
                await trio.testing.wait_all_tasks_blocked()  # its first claim found nothing
                store.claim_gate = trio.Event()
                handle = await runner.submit("w")  # wakes the scheduler: its claim stalls
                await store.claim_in_flight.wait()
                nursery.start_soon(answer_the_claim_once_all_wait)
                outer.cancel()
                await trio.sleep_forever()
    assert ran == []
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)


async def test_a_claim_slower_than_its_lease_is_still_given_back_at_stop(
    autojump_clock: Any,
) -> None:
    """Found by fault injection: the give-back's deadline (our estimate of the lease,
    counted from when the claim was sent) had passed before the claim even landed."""
    store = Durable(lease_duration=3.0)
    ran: list[str] = []

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        ran.append(job.id)

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("w", work)
        await trio.testing.wait_all_tasks_blocked()
        gate = store.claim_gate = trio.Event()
        handle = await runner.submit("w")
        await store.claim_in_flight.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.stop)
            await trio.sleep(5.0)  # longer than the lease: the store applies it now
            gate.set()
    assert ran == []
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)


async def test_join_from_a_handler_says_it_would_wait_for_itself(autojump_clock: Any) -> None:
    runner = JobRunner()

    async def joiner(job: Job[Any], ctx: JobContext[Any]) -> None:
        await runner.join()

    async with runner:
        runner.register_handler("j", joiner)
        handle = await runner.submit("j", retry={"max_attempts": 1})
        with pytest.raises(JobFailedError, match="would wait for its own job"):
            await handle.wait()


async def test_a_give_back_that_fails_once_is_retried_even_past_the_lease_estimate(
    autojump_clock: Any,
) -> None:
    """Found by fault injection: the retry gave up at once against the expired estimate."""
    store = Durable(lease_duration=3.0)

    async def work(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise AssertionError("never started")

    async with JobRunner(storage=store, poll_interval=0.5) as runner:  # type: ignore[arg-type]
        runner.register_handler("w", work)
        await trio.testing.wait_all_tasks_blocked()
        gate = store.claim_gate = trio.Event()
        handle = await runner.submit("w")
        await store.claim_in_flight.wait()
        store.settle_failures = 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.stop)
            await trio.sleep(5.0)
            gate.set()
    assert store.settles == [JobStatus.PENDING, JobStatus.PENDING]
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)
