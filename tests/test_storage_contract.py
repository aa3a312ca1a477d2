"""The JobStorage protocol, tested the same way on every store.

Each test runs on the in-memory store, SQLite and PostgreSQL through the
``store`` / ``store_factory`` fixtures of conftest.py. Delays are chosen so that
the tests hold both on the Trio clock (memory) and on the wall clock (durable
stores): a delay of an hour is "not yet", a delay of zero is "now". Leases that
must expire are short and awaited in a loop under a generous deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_jobs import (
    CancelOutcome,
    ErrorInfo,
    Job,
    JobPriority,
    JobStatus,
    RetryConfig,
    RetryStrategy,
)

StoreFactory = Callable[..., Any]
DEADLINE = 10.0  # seconds of real time a condition may take; never asserted on
SHORT_LEASE = 0.05


def new_job(job_type: str = "work", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


def now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def opened(factory: StoreFactory, **kwargs: Any) -> AsyncIterator[Any]:
    store = factory(**kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def second_store(store: Any, store_factory: StoreFactory) -> AsyncIterator[Any]:
    """Another store object on the same data ("another process"); memory: the same one."""
    other = store_factory()
    if other is store:
        yield store
        return
    await other.open()
    try:
        yield other
    finally:
        await other.close()


async def claim_one(store: Any, worker: str = "w1", **kwargs: Any) -> Job[Any]:
    (job,) = await store.claim(worker, 1, **kwargs)
    return job


async def wait_for_rescue(store: Any) -> list[Job[Any]]:
    with trio.fail_after(DEADLINE):
        while not (rescued := await store.rescue_expired()):  # noqa: ASYNC110 - polls the store
            await trio.sleep(0.01)
    return rescued


# -- save / get ------------------------------------------------------------------------


async def test_save_then_get_returns_every_field(store: Any) -> None:
    created = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    job = Job(
        id="job-1",
        type="email",
        payload={"to": ["a@example.com"], "n": 3, "nested": {"x": None, "y": 1.5}},
        priority=JobPriority.HIGH,
        attempts=0,
        max_attempts=5,
        created_at=created,
        started_at=created + timedelta(seconds=1),
        completed_at=created + timedelta(seconds=2),
        timeout=12.5,
        last_error=ErrorInfo(
            message="boom",
            type="ValueError",
            traceback="Traceback...",
            attempt=2,
            timestamp=created + timedelta(microseconds=7),
            retryable=True,
        ),
        result={"ok": [1, 2]},
        execution_time=0.25,
        progress=42.0,
        progress_message="almost",
        metadata={"source": "test", "tags": ["a", "b"]},
        tenant_id="tenant-a",
        retry=RetryConfig(
            max_attempts=5, base_delay=0.5, max_delay=10.0, jitter=False,
            strategy=RetryStrategy.LINEAR,
        ),
    )  # fmt: skip
    await store.save(job)

    got = await store.get("job-1")

    assert got is not None
    assert attrs.evolve(got, run_at=None) == job
    assert got.created_at.tzinfo is not None
    assert got.run_at is None or got.run_at <= now()
    assert await store.get("no-such-job") is None


def jobs_differing_in_every_field() -> list[Job[Any]]:
    """Three jobs: the first two differ in every field, the third is the first's twin."""
    created = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    full = Job(
        id="full", type="email", payload={"to": ["a@example.com"], "y": 1.5},
        status=JobStatus.FAILED, priority=JobPriority.HIGH, attempts=2, max_attempts=5,
        created_at=created, started_at=created + timedelta(seconds=1),
        completed_at=created + timedelta(seconds=2), timeout=12.5,
        last_error=ErrorInfo(
            message="boom", type="ValueError", traceback="Traceback...", attempt=2,
            timestamp=created + timedelta(microseconds=7), retryable=True,
        ),
        result={"ok": [1, 2]}, execution_time=0.25, progress=42.0, progress_message="almost",
        metadata={"source": "test"}, tenant_id="tenant-a",
        retry=RetryConfig(max_attempts=5, base_delay=0.5, jitter=False,
                          strategy=RetryStrategy.LINEAR),
        unique_key="key-a",
    )  # fmt: skip
    bare = Job(id="bare", type="sms", payload=None, created_at=created + timedelta(hours=1))
    twin = attrs.evolve(full, id="twin", payload=[1, "two"], unique_key=None)
    return [full, bare, twin]


async def test_save_many_keeps_every_field_of_jobs_that_differ_in_all_of_them(
    store: Any,
) -> None:
    if not hasattr(store, "save_many"):
        pytest.skip(f"{type(store).__name__} has no save_many() (optional)")
    jobs = jobs_differing_in_every_field()

    assert await store.save_many(jobs) == [job.id for job in jobs]

    for job in jobs:
        assert attrs.evolve(await store.get(job.id), run_at=None) == job


def runs_of_jobs_alike() -> list[Job[Any]]:
    """Two long runs of jobs alike but for id and payload, around one odd job."""
    full, bare, _ = jobs_differing_in_every_field()
    full = attrs.evolve(full, unique_key=None)
    return [
        *(attrs.evolve(full, id=f"full-{i}", payload={"i": i}) for i in range(20)),
        attrs.evolve(bare, id="odd", priority=JobPriority.LOW),
        *(attrs.evolve(bare, id=f"bare-{i}", payload=[i, None]) for i in range(20)),
    ]


async def test_save_many_keeps_every_field_of_long_runs_of_jobs_alike(store: Any) -> None:
    # (A durable store may write the columns a run shares once, not once per job.)
    if not hasattr(store, "save_many"):
        pytest.skip(f"{type(store).__name__} has no save_many() (optional)")
    jobs = runs_of_jobs_alike()

    assert await store.save_many(jobs) == [job.id for job in jobs]

    for job in jobs:
        assert attrs.evolve(await store.get(job.id), run_at=None) == job


async def test_save_many_with_a_duplicate_id_late_in_a_run_stores_none_of_it(store: Any) -> None:
    if not hasattr(store, "save_many"):
        pytest.skip(f"{type(store).__name__} has no save_many() (optional)")
    jobs = runs_of_jobs_alike()
    await store.save(jobs[-1])

    with pytest.raises(ValueError, match="exists already"):
        await store.save_many(jobs)

    assert [job.id for job in jobs if await store.get(job.id) is not None] == [jobs[-1].id]


async def test_concurrent_saves_keep_every_field_of_jobs_that_differ(store: Any) -> None:
    # (A durable store may send saves made at the same time in one statement.)
    jobs = jobs_differing_in_every_field()
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(store.save, job)

    for job in jobs:
        assert attrs.evolve(await store.get(job.id), run_at=None) == job


async def test_save_rejects_a_duplicate_id_and_keeps_the_original(store: Any) -> None:
    job = new_job(payload={"v": 1})
    await store.save(job)

    with pytest.raises(ValueError, match=job.id):
        await store.save(attrs.evolve(job, payload={"v": 2}))

    got = await store.get(job.id)
    assert got is not None
    assert got.payload == {"v": 1}


async def test_update_overwrites_the_record(store: Any) -> None:
    job = new_job(metadata={"a": 1})
    await store.save(job)
    stored = await store.get(job.id)
    changed = attrs.evolve(stored, metadata={"a": 2}, priority=JobPriority.LOW)

    await store.update(changed)

    assert await store.get(job.id) == changed


async def test_delete_removes_a_job_once(store: Any) -> None:
    job = new_job()
    await store.save(job)

    assert await store.delete(job.id) is True
    assert await store.get(job.id) is None
    assert await store.delete(job.id) is False


# -- claims ----------------------------------------------------------------------------


async def test_claim_takes_highest_priority_first_then_fifo(store: Any) -> None:
    order = [
        ("low-1", JobPriority.LOW),
        ("normal-1", JobPriority.NORMAL),
        ("high-1", JobPriority.HIGH),
        ("normal-2", JobPriority.NORMAL),
        ("critical-1", JobPriority.CRITICAL),
        ("normal-3", JobPriority.NORMAL),
    ]
    for job_id, priority in order:
        await store.save(Job(id=job_id, type="work", priority=priority))

    first = await store.claim("w1", 3)
    rest = await store.claim("w1", 10)

    assert [job.id for job in first] == ["critical-1", "high-1", "normal-1"]
    assert [job.id for job in rest] == ["normal-2", "normal-3", "low-1"]
    assert await store.claim("w1", 10) == []


async def test_claim_marks_jobs_running_with_a_counted_attempt(store: Any) -> None:
    job = new_job()
    await store.save(job)

    claimed = await claim_one(store)

    assert claimed.id == job.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.started_at is not None
    assert await store.get(job.id) == claimed


async def test_get_next_pending_peeks_in_claim_order_without_claiming(store: Any) -> None:
    low = new_job(priority=JobPriority.LOW)
    high = new_job(priority=JobPriority.HIGH)
    await store.save(low)
    await store.save(high)

    peeked = await store.get_next_pending(10)

    assert [job.id for job in peeked] == [high.id, low.id]
    assert [job.id for job in await store.claim("w1", 10)] == [high.id, low.id]


async def test_claim_considers_only_the_given_job_types(store: Any) -> None:
    a = new_job("a")
    b = new_job("b")
    await store.save(a)
    await store.save(b)

    assert await store.claim("w1", 10, []) == []
    assert [job.id for job in await store.claim("w1", 10, ["b", "c"])] == [b.id]
    assert [job.id for job in await store.claim("w1", 10, None)] == [a.id]


async def test_a_delayed_job_is_not_claimable_before_its_delay(store: Any) -> None:
    later = new_job()
    soon = new_job()
    await store.save(later, delay=3600)
    await store.save(soon, delay=0)

    assert [job.id for job in await store.claim("w1", 10)] == [soon.id]
    assert await store.get_next_pending(10) == []
    saved = await store.get(later.id)
    assert saved.status is JobStatus.PENDING
    assert saved.run_at is not None
    assert saved.run_at > now() + timedelta(seconds=3000)


async def test_wait_for_work_returns_when_a_delayed_job_is_due(store: Any) -> None:
    job = new_job()
    await store.save(job, delay=0.1)

    with trio.fail_after(DEADLINE):
        while not (claimed := await store.claim("w1", 1)):
            await store.wait_for_work(3600)

    assert [j.id for j in claimed] == [job.id]


async def test_concurrent_claimers_never_share_a_job(
    store: Any, store_factory: StoreFactory
) -> None:
    ids = {f"job-{i}" for i in range(60)}
    for job_id in sorted(ids):
        await store.save(Job(id=job_id, type="work"))
    taken: dict[str, list[str]] = {"w1": [], "w2": []}

    async def drain(s: Any, worker: str) -> None:
        while jobs := await s.claim(worker, 3):
            taken[worker] += [job.id for job in jobs]

    async with second_store(store, store_factory) as other:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, store, "w1")
                nursery.start_soon(drain, other, "w2")

    assert sorted(taken["w1"] + taken["w2"]) == sorted(ids)
    assert not set(taken["w1"]) & set(taken["w2"])


async def test_mark_running_succeeds_for_exactly_one_caller(store: Any) -> None:
    job = new_job()
    await store.save(job)
    results: list[bool] = []

    async def mark() -> None:
        results.append(await store.mark_running(job.id))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(mark)

    assert sorted(results) == [False] * 4 + [True]
    got = await store.get(job.id)
    assert got.status is JobStatus.RUNNING
    assert await store.mark_running(job.id) is False
    assert await store.mark_running("no-such-job") is False


# -- settle ----------------------------------------------------------------------------


async def test_settle_completed_stores_the_result(store: Any) -> None:
    await store.save(new_job())
    job = await claim_one(store)

    applied = await store.settle(
        job.id,
        worker_id="w1",
        attempt=1,
        status=JobStatus.COMPLETED,
        result={"answer": 42},
        execution_time=0.5,
    )

    assert applied is True
    got = await store.get(job.id)
    assert got.status is JobStatus.COMPLETED
    assert got.result == {"answer": 42}
    assert got.execution_time == 0.5
    assert got.completed_at is not None
    assert got.attempts == 1


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED])
async def test_settle_final_failure_stores_the_error(store: Any, status: JobStatus) -> None:
    await store.save(new_job())
    job = await claim_one(store)
    error = ErrorInfo(message="nope", type="RuntimeError", attempt=1, retryable=False)

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=status, error=error)

    got = await store.get(job.id)
    assert got.status is status
    assert got.last_error == error
    assert got.completed_at is not None
    assert await store.claim("w1", 10) == []


async def test_settle_retrying_waits_out_the_delay_then_counts_the_next_attempt(
    store: Any,
) -> None:
    await store.save(new_job())
    job = await claim_one(store)
    error = ErrorInfo(message="flaky", type="ConnectionError", attempt=1, retryable=True)

    assert await store.settle(
        job.id, worker_id="w1", attempt=1, status=JobStatus.RETRYING, error=error, delay=3600
    )

    got = await store.get(job.id)
    assert got.status is JobStatus.RETRYING
    assert got.last_error == error
    assert got.attempts == 1
    assert got.completed_at is None
    assert await store.claim("w1", 10) == []


async def test_settle_retrying_without_delay_is_claimable_again(store: Any) -> None:
    await store.save(new_job())
    job = await claim_one(store)

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.RETRYING)

    again = await claim_one(store, "w2")
    assert again.id == job.id
    assert again.attempts == 2


async def test_settle_pending_gives_the_job_back_without_counting_the_attempt(
    store: Any,
) -> None:
    await store.save(new_job())
    job = await claim_one(store)

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.PENDING)

    got = await store.get(job.id)
    assert got.status is JobStatus.PENDING
    assert got.attempts == 0
    again = await claim_one(store, "w2")
    assert again.id == job.id
    assert again.attempts == 1


@pytest.mark.parametrize("status", [JobStatus.RETRYING, JobStatus.PENDING])
async def test_a_requested_cancel_turns_a_retry_or_release_into_cancelled(
    store: Any, status: JobStatus
) -> None:
    await store.save(new_job())
    job = await claim_one(store)
    assert await store.request_cancel(job.id) is CancelOutcome.REQUESTED

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=status)

    got = await store.get(job.id)
    assert got.status is JobStatus.CANCELLED
    assert got.completed_at is not None
    assert await store.claim("w1", 10) == []


async def test_settle_is_fenced_by_worker_and_attempt(store: Any) -> None:
    await store.save(new_job())
    job = await claim_one(store)
    before = await store.get(job.id)

    assert not await store.settle(job.id, worker_id="w2", attempt=1, status=JobStatus.COMPLETED)
    assert not await store.settle(job.id, worker_id="w1", attempt=2, status=JobStatus.COMPLETED)
    assert not await store.settle("no-such-job", worker_id="w1", attempt=1, status=JobStatus.FAILED)
    assert await store.get(job.id) == before

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED)
    assert not await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.FAILED)
    assert (await store.get(job.id)).status is JobStatus.COMPLETED


async def test_a_stale_worker_cannot_overwrite_the_rescued_jobs_new_attempt(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job(max_attempts=3))
        job = await claim_one(store, "stale")
        await wait_for_rescue(store)
        fresh = await claim_one(store, "fresh")
        assert fresh.attempts == 2

        assert not await store.settle(
            job.id, worker_id="stale", attempt=1, status=JobStatus.COMPLETED, result="old"
        )
        assert not await store.settle(
            job.id, worker_id="stale", attempt=2, status=JobStatus.COMPLETED, result="old"
        )
        assert not await store.record_progress(job.id, worker_id="stale", attempt=1, progress=5)
        assert (await store.get(job.id)).status is JobStatus.RUNNING

        assert await store.settle(
            job.id, worker_id="fresh", attempt=2, status=JobStatus.COMPLETED, result="new"
        )
        got = await store.get(job.id)
        assert got.status is JobStatus.COMPLETED
        assert got.result == "new"


async def test_record_progress_stores_progress_and_merges_metadata(store: Any) -> None:
    await store.save(new_job(metadata={"keep": 1, "change": 1}))
    job = await claim_one(store)

    assert await store.record_progress(
        job.id,
        worker_id="w1",
        attempt=1,
        progress=50.0,
        message="half",
        metadata={"change": 2, "new": 3},
    )

    got = await store.get(job.id)
    assert got.progress == 50.0
    assert got.progress_message == "half"
    assert got.metadata == {"keep": 1, "change": 2, "new": 3}
    assert not await store.record_progress(job.id, worker_id="w2", attempt=1, progress=60.0)
    assert (await store.get(job.id)).progress == 50.0


# -- leases ----------------------------------------------------------------------------


async def test_heartbeat_reports_cancel_requests_and_lost_jobs(store: Any) -> None:
    await store.save(new_job())
    await store.save(new_job())
    a, b = await store.claim("w1", 2)
    assert await store.request_cancel(b.id) is CancelOutcome.REQUESTED

    beat = await store.heartbeat("w1", [a.id, b.id, "never-held"])

    assert beat.cancel_requested == {b.id}
    assert beat.lost == {"never-held"}
    assert (await store.heartbeat("w2", [a.id])).lost == {a.id}


async def test_heartbeat_keeps_a_lease_alive_that_would_otherwise_expire(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=1.0) as store:
        await store.save(new_job())
        await store.save(new_job())
        kept = await claim_one(store, "alive")
        dropped = await claim_one(store, "dead")

        with trio.fail_after(DEADLINE):
            while True:
                beat = await store.heartbeat("alive", [kept.id])
                assert kept.id not in beat.lost
                if rescued := await store.rescue_expired():
                    break
                await trio.sleep(0.05)

        assert [job.id for job in rescued] == [dropped.id]
        assert (await store.get(kept.id)).status is JobStatus.RUNNING
        assert (await store.heartbeat("dead", [dropped.id])).lost == {dropped.id}


async def test_rescue_puts_an_expired_job_back_with_its_attempt_counted(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job(max_attempts=3))
        job = await claim_one(store, "doomed")

        (rescued,) = await wait_for_rescue(store)

        assert rescued.id == job.id
        assert rescued.status is JobStatus.PENDING
        assert rescued.attempts == 1
        assert rescued.last_error is not None
        assert rescued.last_error.type == "WorkerLostError"
        assert "doomed" in rescued.last_error.message
        assert "lost" in rescued.last_error.message
        assert await store.get(job.id) == rescued
        again = await claim_one(store, "w2")
        assert again.attempts == 2


async def test_rescue_fails_an_expired_job_with_no_attempts_left(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job(max_attempts=1))
        job = await claim_one(store, "doomed")

        (rescued,) = await wait_for_rescue(store)

        assert rescued.id == job.id
        assert rescued.status is JobStatus.FAILED
        assert rescued.attempts == 1
        assert rescued.completed_at is not None
        assert rescued.last_error is not None
        assert rescued.last_error.type == "WorkerLostError"
        assert "lost" in rescued.last_error.message
        assert await store.claim("w2", 10) == []


async def test_rescue_cancels_an_expired_job_whose_cancel_was_requested(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job(max_attempts=3))
        job = await claim_one(store, "doomed")
        assert await store.request_cancel(job.id) is CancelOutcome.REQUESTED

        (rescued,) = await wait_for_rescue(store)

        assert rescued.status is JobStatus.CANCELLED
        assert rescued.completed_at is not None
        assert await store.claim("w2", 10) == []


async def test_concurrent_rescuers_rescue_each_job_once(store_factory: StoreFactory) -> None:
    async with (
        opened(store_factory, lease_duration=SHORT_LEASE) as one,
        opened(store_factory, lease_duration=SHORT_LEASE) as two,
    ):
        for _ in range(5):
            await one.save(new_job(max_attempts=3))
        claimed = await one.claim("doomed", 5)
        assert len(claimed) == 5
        rescued: list[str] = []

        async def rescue(store: Any) -> None:
            rescued.extend(job.id for job in await store.rescue_expired())

        with trio.fail_after(DEADLINE):
            while len(rescued) < 5:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rescue, one)
                    nursery.start_soon(rescue, two)
                await trio.sleep(0.01)

        assert sorted(rescued) == sorted(job.id for job in claimed)


# -- cancellation ----------------------------------------------------------------------


async def test_request_cancel_outcomes(store: Any) -> None:
    pending = new_job()
    retrying = new_job()
    running = new_job()
    done = new_job()
    for job in (pending, retrying, running, done):
        await store.save(job)
    await store.claim("w1", 4)
    await store.settle(
        retrying.id, worker_id="w1", attempt=1, status=JobStatus.RETRYING, delay=3600
    )
    await store.settle(pending.id, worker_id="w1", attempt=1, status=JobStatus.PENDING)
    await store.settle(done.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED)

    assert await store.request_cancel(pending.id) is CancelOutcome.CANCELLED
    assert await store.request_cancel(retrying.id) is CancelOutcome.CANCELLED
    assert await store.request_cancel(running.id) is CancelOutcome.REQUESTED
    assert await store.request_cancel(done.id) is CancelOutcome.NOTHING
    assert await store.request_cancel("no-such-job") is CancelOutcome.NOTHING

    for job in (pending, retrying):
        got = await store.get(job.id)
        assert got.status is JobStatus.CANCELLED
        assert got.completed_at is not None
    assert (await store.get(running.id)).status is JobStatus.RUNNING
    assert (await store.get(done.id)).status is JobStatus.COMPLETED
    assert await store.claim("w1", 10) == []


# -- waiting ---------------------------------------------------------------------------


async def test_wait_for_work_wakes_on_a_save(store: Any) -> None:
    woke = trio.Event()

    async def waiter() -> None:
        await store.wait_for_work(3600)
        woke.set()

    await store.wait_for_work(0)  # forget wake-ups of earlier calls
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await store.save(new_job())
            await woke.wait()


async def test_wait_for_work_returns_after_its_timeout(store: Any) -> None:
    with trio.fail_after(DEADLINE):
        await store.wait_for_work(0)
        await store.wait_for_work(0.05)


async def test_wait_for_change_wakes_when_the_job_changes(store: Any) -> None:
    await store.save(new_job())
    job = await claim_one(store)
    looked = trio.Event()
    woke = trio.Event()
    wakeups = 0

    async def waiter() -> None:
        # "May have changed": a wake-up can be spurious (PostgreSQL's first wait
        # returns once its listener hears changes, and the listener may still
        # deliver the notice of the claim), so look again, as a caller would.
        nonlocal wakeups
        while (await store.get(job.id)).status is JobStatus.RUNNING:
            looked.set()
            await store.wait_for_change(job.id, 3600)
            wakeups += 1
        woke.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await looked.wait()  # it saw the job running (a durable get runs in a thread)
            await trio.testing.wait_all_tasks_blocked()
            await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED)
            await woke.wait()
    # It waited rather than spun: the settle's wake-up, and at most two spurious ones.
    assert 1 <= wakeups <= 3


# -- administration --------------------------------------------------------------------


async def make_one_of_each(store: Any) -> dict[JobStatus, Job[Any]]:
    """Save a job per status reachable through the protocol, of types a and b."""
    jobs = {
        JobStatus.PENDING: new_job("a"),
        JobStatus.RUNNING: new_job("a"),
        JobStatus.RETRYING: new_job("b"),
        JobStatus.COMPLETED: new_job("a"),
        JobStatus.FAILED: new_job("b"),
        JobStatus.CANCELLED: new_job("b"),
        JobStatus.TIMEOUT: new_job("a"),
    }
    for status, job in jobs.items():
        if status is not JobStatus.PENDING:
            await store.save(job)
    claimed = await store.claim("w1", 10)
    assert len(claimed) == 6
    for status, job in jobs.items():
        if status in (JobStatus.PENDING, JobStatus.RUNNING):
            continue
        assert await store.settle(
            job.id,
            worker_id="w1",
            attempt=1,
            status=status,
            delay=3600,
            execution_time=2.0 if status is JobStatus.COMPLETED else None,
        )
    await store.save(jobs[JobStatus.PENDING])
    return jobs


async def test_get_stats_counts_jobs_by_status(store: Any) -> None:
    await make_one_of_each(store)
    await store.save(new_job("a"))

    stats = await store.get_stats()

    assert stats.pending == 2
    assert (stats.running, stats.retrying) == (1, 1)
    assert (stats.completed, stats.failed, stats.cancelled, stats.timeout) == (1, 1, 1, 1)
    assert stats.total_processed == 4
    assert stats.average_execution_time == 2.0
    only_b = await store.get_stats(["b"])
    assert (only_b.pending, only_b.retrying, only_b.failed, only_b.cancelled) == (0, 1, 1, 1)
    assert only_b.total_processed == 2
    assert only_b.average_execution_time is None


async def test_count_unfinished_counts_pending_retrying_and_running(store: Any) -> None:
    await make_one_of_each(store)

    assert await store.count_unfinished() == 3
    assert await store.count_unfinished(["a"]) == 2
    assert await store.count_unfinished(["b"]) == 1
    assert await store.count_unfinished(["zzz"]) == 0


async def test_get_by_status_returns_oldest_first(store: Any) -> None:
    jobs = [new_job() for _ in range(3)]
    for job in jobs:
        await store.save(job)

    assert [j.id for j in await store.get_by_status(JobStatus.PENDING)] == [j.id for j in jobs]
    assert [j.id for j in await store.get_by_status(JobStatus.PENDING, 2)] == [
        j.id for j in jobs[:2]
    ]
    assert await store.get_by_status(JobStatus.FAILED) == []


async def test_list_jobs_newest_first_with_filters(store: Any) -> None:
    jobs = await make_one_of_each(store)

    listed = await store.list_jobs()
    assert len(listed) == 7
    assert listed[0].id == jobs[JobStatus.PENDING].id  # saved last
    assert [j.id for j in await store.list_jobs(status=JobStatus.FAILED)] == [
        jobs[JobStatus.FAILED].id
    ]
    of_b = await store.list_jobs(job_type="b")
    assert {j.id for j in of_b} == {
        jobs[s].id for s in (JobStatus.RETRYING, JobStatus.FAILED, JobStatus.CANCELLED)
    }
    assert [j.id for j in await store.list_jobs(job_type="b", limit=1)] == [of_b[0].id]
    assert await store.list_jobs(status=JobStatus.TIMEOUT, job_type="b") == []


async def test_requeue_gives_a_final_failure_a_fresh_start(store: Any) -> None:
    jobs = await make_one_of_each(store)

    for status in (JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED):
        job_id = jobs[status].id
        assert await store.requeue(job_id) is True
        got = await store.get(job_id)
        assert got.status is JobStatus.PENDING
        assert got.attempts == 0
        assert got.completed_at is None
    for status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.COMPLETED):
        assert await store.requeue(jobs[status].id) is False
    assert await store.requeue("no-such-job") is False

    claimed = await store.claim("w2", 10)
    assert {j.id for j in claimed} == {
        jobs[s].id
        for s in (JobStatus.PENDING, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED)
    }
    assert all(j.attempts == 1 for j in claimed if j.id != jobs[JobStatus.PENDING].id)


async def test_purge_deletes_only_old_final_jobs(store: Any) -> None:
    jobs = await make_one_of_each(store)
    final = {jobs[s].id for s in JobStatus if s.is_final}

    assert await store.purge(3600) == 0
    purged = 0
    with trio.fail_after(DEADLINE):
        while purged < len(final):
            purged += await store.purge(0)
            await trio.sleep(0.01)

    assert purged == len(final)
    remaining = {j.id for j in await store.list_jobs()}
    assert remaining == {jobs[s].id for s in jobs} - final


# -- JSON (durable stores) -------------------------------------------------------------


@pytest.mark.parametrize("field", ["payload", "metadata"])
async def test_an_unencodable_value_names_its_field_and_stores_nothing(
    durable_store_factory: StoreFactory, field: str
) -> None:
    async with opened(durable_store_factory) as store:
        value: Any = object() if field == "payload" else {"x": object()}
        job = new_job(**{field: value})

        with pytest.raises(TypeError, match=field):
            await store.save(job)

        assert await store.get(job.id) is None
        assert await store.count_unfinished() == 0


async def test_an_unencodable_result_names_it_and_changes_nothing(
    durable_store_factory: StoreFactory,
) -> None:
    async with opened(durable_store_factory) as store:
        await store.save(new_job())
        job = await claim_one(store)
        before = await store.get(job.id)

        with pytest.raises(TypeError, match="result"):
            await store.settle(
                job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED, result={1, 2}
            )

        assert await store.get(job.id) == before


async def test_jobs_survive_reopening_the_store(durable_store_factory: StoreFactory) -> None:
    job = new_job(payload={"keep": True})
    async with opened(durable_store_factory) as store:
        await store.save(job)
        await store.save(new_job())
        claimed = await claim_one(store)
        await store.settle(
            claimed.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED, result=[1]
        )

    async with opened(durable_store_factory) as store:
        got = await store.get(claimed.id)
        assert got.status is JobStatus.COMPLETED
        assert got.result == [1]
        assert await store.count_unfinished() == 1


async def test_a_dropped_worker_row_is_put_back_by_its_next_heartbeat(
    store_factory: Any,
) -> None:
    """A worker that stalled past its row's expiry is listed again once it renews.

    A rescuer drops the stale row with the worker's jobs; the worker, registered
    through this store object, writes the row back on its next heartbeat, even
    when it holds no job (an idle worker must not vanish from workers() forever).
    """
    from datetime import UTC, datetime

    from trio_jobs import WorkerInfo
    from trio_jobs.storage import WorkerRegistry

    s = store_factory(lease_duration=0.05)
    if not isinstance(s, WorkerRegistry):
        pytest.skip("this store has no workers table")
    await s.open()
    try:
        now = datetime.now(UTC)
        info = WorkerInfo(
            worker_id="w-stalled",
            hostname="host",
            pid=1,
            started_at=now,
            last_seen=now,
            concurrency=2,
            running=0,
            job_types=frozenset({"work"}),
        )
        await s.register_worker(info)
        with trio.fail_after(10):
            # The row expires by the store's clock (the server's, for the durable ones).
            while await s.workers():  # noqa: ASYNC110 - nothing to wait on but time
                await trio.sleep(0.01)
        await s.rescue_expired()  # drops the stale row
        assert await s.workers() == []
        beat = await s.heartbeat("w-stalled", [])
        assert beat.lost == frozenset()
        [back] = await s.workers()
        assert (back.worker_id, back.concurrency, back.job_types) == (
            "w-stalled",
            2,
            frozenset({"work"}),
        )
        await s.unregister_worker("w-stalled")
        await s.heartbeat("w-stalled", [])  # unregistered: nothing is put back
        assert await s.workers() == []
    finally:
        await s.close()


# -- a fresh attempt starts from no progress (issue 17) ---------------------------------------


async def _claim_with_progress(store: Any, worker: str = "w1") -> Job[Any]:
    job = await claim_one(store, worker)
    assert await store.record_progress(
        job.id, worker_id=worker, attempt=job.attempts, progress=60.0, message="60 of 100"
    )
    return job


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RETRYING])
async def test_a_job_given_back_or_retried_loses_the_progress_of_its_last_attempt(
    store: Any, status: JobStatus
) -> None:
    await store.save(new_job())
    job = await _claim_with_progress(store)

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=status)

    got = await store.get(job.id)
    assert got.status is status
    assert (got.progress, got.progress_message) == (None, None)


async def test_a_rescued_job_loses_the_progress_of_its_lost_attempt(
    store_factory: StoreFactory,
) -> None:
    async with opened(store_factory, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job(max_attempts=3))
        await _claim_with_progress(store, "doomed")

        (rescued,) = await wait_for_rescue(store)

        assert rescued.status is JobStatus.PENDING
        assert (rescued.progress, rescued.progress_message) == (None, None)
        assert (await store.get(rescued.id)).progress is None


async def test_a_final_failure_keeps_the_progress_it_reached(store: Any) -> None:
    await store.save(new_job())
    job = await _claim_with_progress(store)

    assert await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.FAILED)

    assert (await store.get(job.id)).progress == 60.0


# -- what the command line asks of stores (issue 17) -------------------------------------------


def needs(store: Any, method: str) -> None:
    """Skip for a store without this optional method (a custom store need not have it)."""
    if not hasattr(store, method):
        pytest.skip(f"{type(store).__name__} has no {method}() (optional)")


async def test_waiting_by_type_counts_pending_and_retrying_jobs_of_each_type(store: Any) -> None:
    needs(store, "waiting_by_type")
    for job_type in ("mail", "mail", "report", "done"):
        await store.save(new_job(job_type))
    (claimed,) = await store.claim("w1", 1, job_types=["report"])
    assert await store.settle(
        claimed.id, worker_id="w1", attempt=1, status=JobStatus.RETRYING, delay=3600
    )
    (done,) = await store.claim("w1", 1, job_types=["done"])
    assert await store.settle(done.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED)

    assert await store.waiting_by_type() == {"mail": 2, "report": 1}


async def test_job_ids_starting_with_finds_ids_by_prefix_in_order(store: Any) -> None:
    needs(store, "job_ids_starting_with")
    ids = ["abc1" + "0" * 28, "abc2" + "0" * 28, "abd0" + "0" * 28]
    for job_id in ids:
        await store.save(Job(id=job_id, type="work"))

    assert await store.job_ids_starting_with("abc") == ids[:2]
    assert await store.job_ids_starting_with("abc", limit=1) == ids[:1]
    assert await store.job_ids_starting_with("abd0") == ids[2:]
    assert await store.job_ids_starting_with("ffff") == []
    assert await store.job_ids_starting_with(ids[0]) == ids[:1]
    with pytest.raises(ValueError, match="prefix"):
        await store.job_ids_starting_with("")
