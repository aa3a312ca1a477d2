"""Unique jobs, submit_many, run_at and retention, on each store (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from conftest import StoreFactory
from trio_jobs import (
    Job,
    JobClient,
    JobContext,
    JobRunner,
    JobStatus,
    RunnerClosedError,
    UnknownJobTypeError,
)

pytestmark = pytest.mark.slow


async def echo(job: Job[Any], ctx: JobContext) -> Any:
    await trio.lowlevel.checkpoint()
    return job.payload


def runner_on(store_factory: StoreFactory, **kwargs: Any) -> JobRunner:
    runner = JobRunner(storage=store_factory(), poll_interval=0.05, **kwargs)
    runner.register_handler("echo", echo)
    return runner


# -- unique jobs ---------------------------------------------------------------------------


async def test_an_active_unique_key_deduplicates_and_a_final_one_does_not(
    store_factory: StoreFactory,
) -> None:
    async with JobClient(store_factory()) as client:
        first = await client.submit("echo", 1, unique_key="k")
        again = await client.submit("echo", 2, unique_key="k", delay=60)
        other = await client.submit("echo", 3, unique_key="other")
        assert not first.deduplicated
        assert not other.deduplicated
        assert again.deduplicated
        assert again.id == first.id
        assert (await client.get_job(first.id)).unique_key == "k"  # type: ignore[union-attr]
        assert (await client.stats()).pending == 2
    async with runner_on(store_factory) as runner:
        assert await (await runner.get_handle(first.id)).wait() == 1
        # Final now: the key is free again.
        fresh = await runner.submit("echo", 4, unique_key="k")
        assert not fresh.deduplicated
        assert fresh.id != first.id
        assert await fresh.wait() == 4


async def test_a_retrying_job_keeps_its_key_and_never_conflicts_with_itself(
    store_factory: StoreFactory,
) -> None:
    calls = 0

    async def flaky(job: Job[Any], ctx: JobContext) -> str:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        if calls < 3:
            raise ConnectionError("try again")
        return "ok"

    async with JobRunner(storage=store_factory(), poll_interval=0.05) as runner:
        runner.register_handler("flaky", flaky)
        handle = await runner.submit(
            "flaky", unique_key="once", retry={"base_delay": 0.05, "jitter": False}
        )
        assert await handle.wait() == "ok"
        job = await handle.get_status()
        assert job.attempts == 3
        assert job.status is JobStatus.COMPLETED


async def test_retrying_a_final_job_whose_key_an_active_job_holds_is_refused(
    store_factory: StoreFactory,
) -> None:
    async with JobClient(store_factory()) as client:
        first = await client.submit("echo", 1, unique_key="nightly")
        assert await client.cancel(first.id)
        second = await client.submit("echo", 2, unique_key="nightly")
        assert not second.deduplicated
        # The cancelled job cannot come back while the second holds the key: the
        # same ValueError on every store, naming the key and the holder.
        with pytest.raises(
            ValueError, match=rf"unique_key 'nightly' is held by active job {second.id}"
        ):
            await client.retry(first.id)
        with pytest.raises(ValueError, match="'nightly'"):
            await client.storage.requeue(first.id)
        old = await client.get_job(first.id)
        assert old is not None
        assert old.status is JobStatus.CANCELLED
        new = await client.get_job(second.id)
        assert new is not None
        assert new.status is JobStatus.PENDING
        assert (await client.stats()).pending == 1
        # Once the holder is final, the key is free: the retry works, and the
        # retried job holds the key again.
        assert await client.cancel(second.id)
        assert await client.retry(first.id)
        again = await client.submit("echo", 3, unique_key="nightly")
        assert again.deduplicated
        assert again.id == first.id
        # A job without a key, or whose key nobody holds, retries as before.
        plain = await client.submit("echo", 4)
        assert await client.cancel(plain.id)
        assert await client.retry(plain.id)
        assert not await client.retry("no-such-job")


async def test_concurrent_submits_of_one_key_store_one_job(store_factory: StoreFactory) -> None:
    handles = []
    async with JobClient(store_factory()) as client:

        async def submit(i: int) -> None:
            handles.append(await client.submit("echo", i, unique_key=f"key-{i % 5}"))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(submit, i)
        assert (await client.stats()).pending == 5
        assert len({h.id for h in handles}) == 5
        assert sum(not h.deduplicated for h in handles) == 5


def test_unique_key_must_be_a_non_empty_string() -> None:
    async def main() -> None:
        async with JobRunner() as runner:
            runner.register_handler("echo", echo)
            with pytest.raises(TypeError, match="unique_key"):
                await runner.submit("echo", unique_key="")
            with pytest.raises(TypeError, match="unique_key"):
                await runner.submit("echo", unique_key=3)  # type: ignore[arg-type]
            assert (await runner.stats()).pending == 0

    trio.run(main)


# -- batches -------------------------------------------------------------------------------


async def test_submit_many_stores_every_payload_and_runs_them(store_factory: StoreFactory) -> None:
    async with runner_on(store_factory) as runner:
        handles = await runner.submit_many("echo", (i for i in range(100)), priority=2)
        assert [await h.wait() for h in handles] == list(range(100))
        jobs = [await h.get_status() for h in handles]
        assert {j.priority for j in jobs} == {2}
        assert await runner.submit_many("echo", []) == []


async def test_submit_many_with_a_bad_payload_stores_none(
    store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    if "memory" in request.node.callspec.id:
        pytest.skip("the in-memory store keeps any object: nothing to encode")
    async with JobClient(store_factory()) as client:
        with pytest.raises(TypeError, match="payload"):
            await client.submit_many("echo", [1, 2, {"bad": object()}, 4])
        assert (await client.stats()).pending == 0


async def test_submit_many_validates_options_before_storing(store_factory: StoreFactory) -> None:
    async with runner_on(store_factory) as runner:
        with pytest.raises(ValueError, match="priority"):
            await runner.submit_many("echo", [1, 2], priority=7)
        with pytest.raises(ValueError, match="delay"):
            await runner.submit_many("echo", [1], delay=math.nan)
        with pytest.raises(UnknownJobTypeError):
            await runner.submit_many("nobody", [1])
        assert (await runner.stats()).pending == 0
    with pytest.raises(RunnerClosedError):
        await runner.submit_many("echo", [1])


async def test_submit_many_with_a_unique_key_stores_the_first_only(
    store_factory: StoreFactory,
) -> None:
    async with JobClient(store_factory()) as client:
        handles = await client.submit_many("echo", [1, 2, 3], unique_key="batch")
        assert [h.deduplicated for h in handles] == [False, True, True]
        assert len({h.id for h in handles}) == 1
        assert (await client.stats()).pending == 1


# -- run_at --------------------------------------------------------------------------------


async def test_run_at_delays_the_job_until_then(store_factory: StoreFactory) -> None:
    async with JobClient(store_factory()) as client:
        later = datetime.now(UTC) + timedelta(hours=1)
        handle = await client.submit("echo", 1, run_at=later)
        job = await handle.get_status()
        assert job.run_at is not None
        assert abs((job.run_at - later).total_seconds()) < 5
        claimed = await client.storage.claim("w", 10)
        assert claimed == []


async def test_run_at_in_the_past_runs_at_once(store_factory: StoreFactory) -> None:
    async with runner_on(store_factory) as runner:
        handle = await runner.submit("echo", 7, run_at=datetime(2000, 1, 1, tzinfo=UTC))
        assert await handle.wait() == 7


async def test_run_at_must_be_aware_and_exclusive_with_delay() -> None:
    async with JobRunner() as runner:
        runner.register_handler("echo", echo)
        with pytest.raises(ValueError, match="run_at"):
            await runner.submit("echo", run_at=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="delay or run_at"):
            await runner.submit("echo", delay=1.0, run_at=datetime(2030, 1, 1, tzinfo=UTC))
        with pytest.raises(TypeError, match="run_at"):
            await runner.submit("echo", run_at="tomorrow")  # type: ignore[arg-type]
        assert (await runner.stats()).pending == 0


# -- schedule ticks --------------------------------------------------------------------------


def tick_job(key: str, tick: datetime) -> Job[Any]:
    return Job(id=f"{key}-{tick.timestamp():.0f}", type="echo", metadata={"tick": tick.isoformat()})


async def test_a_tick_at_or_before_the_newest_enqueued_one_is_refused(
    store_factory: StoreFactory,
) -> None:
    # Ticks of a key are enqueued in order: one at or before the newest one (a
    # runner backfilling late, or racing another) is never enqueued again.
    base = datetime(2024, 1, 1, 12, tzinfo=UTC)
    t1, t2, t3 = (base + timedelta(minutes=m) for m in (1, 2, 3))
    async with JobClient(store_factory()) as client:
        store: Any = client.storage
        assert await store.enqueue_tick("k", t2, tick_job("k", t2))
        assert not await store.enqueue_tick("k", t2, tick_job("k2", t2))
        assert not await store.enqueue_tick("k", t1, tick_job("k", t1))
        assert await store.enqueue_tick("other", t1, tick_job("other", t1))
        assert await store.enqueue_tick("k", t3, tick_job("k", t3))
        ids = sorted(job.id for job in await client.list_jobs())
    assert ids == sorted(tick_job(k, t).id for k, t in (("k", t2), ("k", t3), ("other", t1)))


async def test_the_ticks_of_a_schedule_do_not_pile_up(
    durable_store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    base = datetime(2024, 1, 1, 12, tzinfo=UTC)
    async with JobClient(durable_store_factory()) as client:
        store: Any = client.storage
        for minute in range(50):
            tick = base + timedelta(minutes=minute)
            assert await store.enqueue_tick("k", tick, tick_job("k", tick))
        statement = "SELECT count(*) FROM {}schedule_ticks WHERE key = 'k'"
        if "sqlite" in request.node.callspec.id:
            import sqlite3

            with contextlib.closing(sqlite3.connect(store._path)) as conn:
                (rows,) = conn.execute(statement.format("")).fetchone()
        else:
            import psycopg

            from conftest import PG_DSN

            with psycopg.connect(PG_DSN) as conn:
                (rows,) = conn.execute(statement.format(f'"{store.schema}".')).fetchone()
        assert rows == 1
        assert len(await client.list_jobs()) == 50


# -- retention -----------------------------------------------------------------------------


@pytest.mark.parametrize("retention", [{JobStatus.COMPLETED: -1}, {JobStatus.PENDING: 1}, "x"])
def test_bad_retention_is_refused(retention: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="retention"):
        JobRunner(retention=retention)


async def test_purge_batch_deletes_old_final_jobs_in_bounded_batches(
    store_factory: StoreFactory,
) -> None:
    async with runner_on(store_factory) as runner:
        handles = await runner.submit_many("echo", range(25))
        for h in handles:
            await h.wait()
        store: Any = runner.storage
        assert await store.purge_batch(JobStatus.FAILED, 0, limit=10, holder="me") == 0
        deleted = [await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="me")]
        while deleted[-1]:
            deleted.append(await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="me"))
        assert deleted == [10, 10, 5, 0]
        assert await store.purge_batch(JobStatus.COMPLETED, 3600, limit=10, holder="me") == 0


async def test_purge_batch_is_done_by_one_holder_at_a_time(
    durable_store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    if "postgres" in request.node.callspec.id:
        pytest.skip("PostgreSQL's lock is per statement: see test_postgres_retention_lock")
    async with JobClient(durable_store_factory()) as client:
        store: Any = client.storage
        assert await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="a") == 0
        assert await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="b") is None
        assert await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="a") == 0


async def test_postgres_retention_lock_excludes_a_second_trimmer(pg_schema: str) -> None:
    import psycopg

    from conftest import PG_DSN
    from trio_jobs import PostgresStorage
    from trio_jobs.storage.postgres._batches import retention_key

    async with PostgresStorage(PG_DSN, schema=pg_schema) as store:
        with psycopg.connect(PG_DSN) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (retention_key(pg_schema),))
            assert await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="b") is None
        assert await store.purge_batch(JobStatus.COMPLETED, 0, limit=10, holder="b") == 0


async def test_postgres_retention_pass_resumes_after_its_last_batch_and_misses_nothing(
    pg_schema: str,
) -> None:
    # Each batch's index scan starts at the newest completed_at the pass deleted
    # (not at the dead entries before it): rows tied at a batch's edge are still
    # deleted, and a row older than that floor is left to the next pass.
    import psycopg

    from conftest import PG_DSN
    from trio_jobs import PostgresStorage

    def insert(ids: range, ago: str) -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                f"""INSERT INTO "{pg_schema}".jobs (id, type, payload, status, priority,
                        max_attempts, created_at, completed_at, ready_at)
                    SELECT 'j' || g, 'echo', 'null', 'completed', 1, 1, c, c, c
                    FROM generate_series(%s::int, %s::int) AS g,
                         LATERAL (SELECT now() - interval '{ago}' AS c) AS t""",
                (ids.start, ids.stop - 1),
            )

    async with PostgresStorage(PG_DSN, schema=pg_schema) as store:
        await trio.to_thread.run_sync(insert, range(25), "2 days")  # 25 ties
        assert await store.purge_batch(JobStatus.COMPLETED, 3600, limit=10, holder="a") == 10
        await trio.to_thread.run_sync(insert, range(100, 103), "3 days")  # below the floor
        deleted = [await store.purge_batch(JobStatus.COMPLETED, 3600, limit=10, holder="a")]
        while deleted[-1] == 10:
            deleted.append(await store.purge_batch(JobStatus.COMPLETED, 3600, limit=10, holder="a"))
        assert deleted == [10, 5]
        # The pass is over: the next one starts from the oldest again.
        assert await store.purge_batch(JobStatus.COMPLETED, 3600, limit=10, holder="a") == 3
        assert await store.list_jobs() == []


async def test_runner_retention_trims_old_jobs(store_factory: StoreFactory) -> None:
    async with runner_on(store_factory, retention={JobStatus.COMPLETED: 0.0}) as runner:
        handles = await runner.submit_many("echo", range(5))
        for h in handles:
            await h.wait()

        async def gone() -> bool:
            return (await runner.stats()).completed == 0

        with trio.fail_after(30):
            while not await gone():  # noqa: ASYNC110 - the retention task is on a timer
                await trio.sleep(0.05)
