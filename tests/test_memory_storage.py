"""MemoryStorage specifics, beyond the shared contract of test_storage_contract.py.

The in-memory store keeps delays, backoffs and leases on the Trio clock, so they
are exact under ``autojump_clock``; it is event-driven, so waiters wake at once;
and one store may be shared in-process by runners and a JobClient.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobCancelledError,
    JobClient,
    JobContext,
    JobFailedError,
    JobNotFoundError,
    JobPriority,
    JobRunner,
    JobStats,
    JobStatus,
    MemoryStorage,
    RunnerClosedError,
)


def new_job(job_type: str = "work", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


async def ids(jobs: Awaitable[list[Job[Any]]]) -> list[str]:
    return [job.id for job in await jobs]


# -- construction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError), ("30", TypeError)],
)
def test_invalid_lease_duration(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="lease_duration"):
        MemoryStorage(lease_duration=value)


async def test_it_is_an_async_context_manager() -> None:
    async with MemoryStorage(lease_duration=5.0) as store:
        assert store.lease_duration == 5.0
        job = new_job()
        await store.save(job)
        assert await store.get(job.id) == job


# -- the Trio clock ---------------------------------------------------------------


async def test_a_delay_ends_exactly_on_the_trio_clock(autojump_clock: Any) -> None:
    store = MemoryStorage()
    job = new_job()
    await store.save(job, delay=5.0)
    await trio.sleep(4.999)
    assert await store.claim("w", 1) == []
    await store.wait_for_work(100.0)
    assert trio.current_time() == 5.0
    assert await ids(store.claim("w", 1)) == [job.id]


async def test_a_retry_backoff_ends_exactly_on_the_trio_clock(autojump_clock: Any) -> None:
    store = MemoryStorage()
    await store.save(new_job())
    (job,) = await store.claim("w", 1)
    await trio.sleep(1.0)
    await store.settle(job.id, worker_id="w", attempt=1, status=JobStatus.RETRYING, delay=3.0)
    assert await store.claim("w", 1) == []
    await store.wait_for_work(100.0)
    assert trio.current_time() == 4.0
    (again,) = await store.claim("w", 1)
    assert (again.id, again.attempts) == (job.id, 2)


async def test_leases_run_on_the_trio_clock_and_heartbeats_renew_them(
    autojump_clock: Any,
) -> None:
    store = MemoryStorage(lease_duration=10.0)
    await store.save(new_job(), delay=0.0)
    await store.save(new_job(), delay=0.0)
    renewed, forgotten = await store.claim("w", 2)
    await trio.sleep(6.0)
    # Only the listed job's lease is renewed, to 6 + 10 = 16.
    beat = await store.heartbeat("w", [renewed.id])
    assert beat.lost == frozenset()
    await trio.sleep(3.75)
    assert await store.rescue_expired() == []
    await trio.sleep(0.5)
    assert await ids(store.rescue_expired()) == [forgotten.id]
    await trio.sleep(5.5)
    assert await store.rescue_expired() == []
    await trio.sleep(0.5)
    (rescued,) = await store.rescue_expired()
    assert (rescued.id, rescued.status, trio.current_time()) == (
        renewed.id,
        JobStatus.PENDING,
        16.25,
    )


async def test_wait_for_change_returns_after_its_timeout_exactly(autojump_clock: Any) -> None:
    store = MemoryStorage()
    job = new_job()
    await store.save(job)
    await store.wait_for_change(job.id, 7.5)
    assert trio.current_time() == 7.5


async def test_wait_for_change_wakes_at_once_on_a_cancel(autojump_clock: Any) -> None:
    store = MemoryStorage()
    job = new_job()
    await store.save(job, delay=50.0)

    async def cancel_later() -> None:
        await trio.sleep(2.0)
        await store.request_cancel(job.id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_later)
        await store.wait_for_change(job.id, 100.0)
    assert trio.current_time() == 2.0


Call = Callable[[MemoryStorage, Job[Any]], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "open": lambda s, j: s.open(),
    "close": lambda s, j: s.close(),
    "save": lambda s, j: s.save(new_job()),
    "update": lambda s, j: s.update(j),
    "get": lambda s, j: s.get(j.id),
    "get_next_pending": lambda s, j: s.get_next_pending(5),
    "get_by_status": lambda s, j: s.get_by_status(JobStatus.PENDING),
    "mark_running": lambda s, j: s.mark_running("unknown"),
    "delete": lambda s, j: s.delete("unknown"),
    "get_stats": lambda s, j: s.get_stats(),
    "claim-nothing": lambda s, j: s.claim("w", 5, ["no-such-type"]),
    "settle-refused": lambda s, j: s.settle(
        j.id, worker_id="w", attempt=9, status=JobStatus.COMPLETED
    ),
    "record_progress": lambda s, j: s.record_progress(j.id, worker_id="w", attempt=9),
    "heartbeat": lambda s, j: s.heartbeat("w", []),
    "rescue_expired": lambda s, j: s.rescue_expired(),
    "request_cancel": lambda s, j: s.request_cancel("unknown"),
    "wait_for_work-ready": lambda s, j: s.wait_for_work(10.0),
    "list_jobs": lambda s, j: s.list_jobs(),
    "count_unfinished": lambda s, j: s.count_unfinished(),
    "requeue": lambda s, j: s.requeue(j.id),
    "purge": lambda s, j: s.purge(3600.0),
}


@pytest.mark.parametrize("name", list(CALLS))
async def test_every_async_method_checkpoints(name: str) -> None:
    store = MemoryStorage()
    job = new_job()
    await store.save(job)
    with trio.testing.assert_checkpoints():
        await CALLS[name](store, job)


# -- one store shared in-process: runners and a JobClient -------------------------


class Work:
    """``payload = (seconds, fail)``; records (start time, cancelled-at)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.cancelled: list[float] = []

    async def __call__(self, job: Job[Any], ctx: JobContext[Any]) -> str:
        seconds, fail = job.payload
        self.starts.append(trio.current_time())
        if fail:
            raise ConnectionError("flaky network")
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.cancelled.append(trio.current_time())
            raise
        return f"slept {seconds}"


async def test_a_client_submits_without_a_handler_check() -> None:
    store = MemoryStorage()
    client = JobClient(store)
    with pytest.raises(RunnerClosedError):
        await client.submit("nobody-handles-this")
    async with client:
        handle = await client.submit("nobody-handles-this", {"x": 1}, priority=JobPriority.HIGH)
        job = await client.get_job(handle.id)
        assert job is not None
        assert (job.status, job.payload, job.priority) == (
            JobStatus.PENDING,
            {"x": 1},
            JobPriority.HIGH,
        )
        assert (await client.stats()).pending == 1
        assert not await handle.is_done()
        with pytest.raises(ValueError, match="priority"):
            await client.submit("x", priority=7)
        assert (await client.stats()).pending == 1
        with pytest.raises(JobNotFoundError):
            await client.get_handle("no-such-job")


async def test_a_client_job_runs_at_once_on_a_runner_of_the_same_store(
    autojump_clock: Any,
) -> None:
    store = MemoryStorage()
    work = Work()
    async with (
        JobRunner(storage=store, poll_interval=1000.0) as runner,
        JobClient(store, poll_interval=1000.0) as client,
    ):
        runner.register_handler("w", work)
        await trio.sleep(3.0)
        handle = await client.submit("w", (2.0, False))
        # The client's handle sees the runner's completion when it happens.
        assert await handle.wait() == "slept 2.0"
        assert trio.current_time() == 5.0
        assert await (await runner.get_handle(handle.id)).wait() == "slept 2.0"
    assert work.starts == [3.0]


async def test_jobs_in_the_store_run_only_inside_a_runners_block(autojump_clock: Any) -> None:
    store = MemoryStorage()
    work = Work()
    async with JobClient(store) as client:
        handle = await client.submit("w", (1.0, False))
        await trio.sleep(5.0)
        assert (await handle.get_status()).status is JobStatus.PENDING
        async with JobRunner(storage=store) as runner:
            runner.register_handler("w", work)
        assert await handle.wait() == "slept 1.0"
    assert work.starts == [5.0]


async def test_client_methods_checkpoint() -> None:
    async with JobClient(MemoryStorage()) as client:
        with trio.testing.assert_checkpoints():
            handle = await client.submit("w")
        with trio.testing.assert_checkpoints():
            await client.get_job(handle.id)
        with trio.testing.assert_checkpoints():
            await client.get_handle(handle.id)
        with trio.testing.assert_checkpoints():
            await client.stats()
        with trio.testing.assert_checkpoints():
            assert await client.cancel(handle.id)
        with trio.testing.assert_checkpoints():
            await handle.is_done()
        with trio.testing.assert_checkpoints(), pytest.raises(JobCancelledError):
            await handle.wait()


async def test_a_clients_retry_policy_is_what_the_runner_applies(autojump_clock: Any) -> None:
    store = MemoryStorage()
    work = Work()
    async with JobRunner(storage=store) as runner, JobClient(store) as client:
        runner.register_handler("w", work)
        handle = await client.submit("w", (0.0, True), retry={"max_attempts": 2, "jitter": False})
        with pytest.raises(JobFailedError, match="flaky network"):
            await handle.wait()
    # Two attempts, one second apart (the default base_delay), as the client asked.
    assert work.starts == [0.0, 1.0]


async def test_a_client_cancel_reaches_a_running_job(autojump_clock: Any) -> None:
    store = MemoryStorage()
    work = Work()
    async with JobRunner(storage=store) as runner, JobClient(store) as client:
        runner.register_handler("w", work)
        handle = await client.submit("w", (100.0, False))
        await trio.sleep(4.0)
        assert await handle.cancel()
        with pytest.raises(JobCancelledError):
            await handle.wait()
        # In one process the request is delivered at once, not at the next poll.
        assert trio.current_time() == 4.0
        assert not await client.cancel(handle.id)
    assert work.cancelled == [4.0]
    assert (await client.get_job(handle.id)) is not None
    job = await store.get(handle.id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED


async def test_runners_sharing_a_store_run_and_drain_only_their_own_types(
    autojump_clock: Any,
) -> None:
    store = MemoryStorage()
    a_work, b_work = Work(), Work()
    async with JobRunner(storage=store) as b_runner:
        b_runner.register_handler("b", b_work)
        async with JobRunner(storage=store) as a_runner:
            a_runner.register_handler("a", a_work)
            await a_runner.submit("a", (1.0, False))
            late_b = await b_runner.submit("b", (1.0, False), delay=50.0)
        # a_runner left after its own job, without waiting for b's.
        assert trio.current_time() == 1.0
        assert (await store.get_stats(["a"])).completed == 1
        assert (await late_b.get_status()).status is JobStatus.PENDING
    assert trio.current_time() == 51.0
    assert (a_work.starts, b_work.starts) == ([0.0], [50.0])
    assert await store.get_stats() == JobStats(
        completed=2, total_processed=2, average_execution_time=1.0
    )


async def test_a_job_back_from_backoff_queues_from_its_due_time(autojump_clock: Any) -> None:
    # As the durable stores order by run_at: a job that failed and waited out a
    # backoff goes behind jobs submitted while it waited, within its priority.
    store = MemoryStorage()
    retried = new_job("a")
    await store.save(retried)
    [claimed] = await store.claim("w", 1)
    assert await store.settle(
        retried.id, worker_id="w", attempt=claimed.attempts, status=JobStatus.RETRYING, delay=5.0
    )
    await trio.sleep(1.0)
    meanwhile = new_job("b")  # another type: the queues are compared by arrival
    await store.save(meanwhile)
    await trio.sleep(5.0)
    assert [job.id for job in await store.claim("w", 2)] == [meanwhile.id, retried.id]
