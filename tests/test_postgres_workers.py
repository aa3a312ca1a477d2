"""PostgresStorage at rest and at scale: the workers table, delayed jobs, the idle LISTEN thread.

Each test uses its own schema. Times are moved by writing the server's rows
(``expires_at``, ``lease_expires_at``, ``ready_at``) rather than by waiting;
real time appears only as generous ``fail_after`` deadlines. Rows read by a
statement are counted with ``pg_stat_xact_user_tables``, as in test_postgres.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import attrs
import psycopg
import pytest
import trio
import trio.testing

from pg_admin import PG_DSN, MakeStore, admin_async
from trio_jobs import (
    Heartbeat,
    Job,
    JobPriority,
    JobStatus,
    PostgresStorage,
    WorkerInfo,
    WorkerRegistry,
)
from trio_jobs.storage.postgres import _sql

pytestmark = pytest.mark.slow

DEADLINE = 10.0  # generous: what should happen at once must happen well before this


def info(worker_id: str, *, started: datetime | None = None, **fields: Any) -> WorkerInfo:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "hostname": "host-a",
        "pid": 4242,
        "started_at": started or now,
        "last_seen": now,
        "concurrency": 10,
        "running": 0,
        "job_types": frozenset({"t"}),
    }
    values.update(fields)
    return WorkerInfo(**values)


async def fill(schema: str, count: int, *, prefix: str = "j", priority: int = 1) -> None:
    """Insert ``count`` ready jobs of type t, fast (SQL)."""
    await admin_async(
        f'INSERT INTO "{schema}".jobs (id, type, payload, status, priority, max_attempts,'
        f" created_at, ready_at) SELECT '{prefix}' || i, 't', 'null', 'pending', {priority}, 3,"
        f" now(), now() FROM generate_series(1, {count}) AS i"
    )


async def expire_worker(schema: str, worker_id: str) -> None:
    await admin_async(
        f"UPDATE \"{schema}\".workers SET expires_at = now() - interval '1 second'"
        " WHERE worker_id = %s",
        (worker_id,),
    )


async def expire_leases(schema: str, worker_id: str) -> None:
    await admin_async(
        f"UPDATE \"{schema}\".jobs SET lease_expires_at = now() - interval '1 second'"
        " WHERE worker_id = %s",
        (worker_id,),
    )


async def job_row(schema: str, job_id: str, columns: str) -> tuple[Any, ...]:
    [row] = await admin_async(f'SELECT {columns} FROM "{schema}".jobs WHERE id = %s', (job_id,))
    return row


def rows_read(conn: psycopg.Connection[Any], schema: str) -> int:
    [(read,)] = conn.execute(
        "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        " WHERE relid = %s::regclass",
        (f'"{schema}".jobs',),
    ).fetchall()
    return int(read)


# -- migration --------------------------------------------------------------------


async def test_version_1_schemas_migrate_keeping_jobs_and_marking_delayed_ones(
    pg_schema: str,
) -> None:
    s = f'"{pg_schema}"'
    await admin_async(f"CREATE SCHEMA {s}")
    statements = _sql.build_statements(pg_schema, ("a", "b", "c"))
    await admin_async(statements.schema_version_table)
    for statement in _sql._migration_1(s):
        await admin_async(statement)
    await admin_async(f"INSERT INTO {s}.schema_version (version) VALUES (1)")
    await admin_async(
        f"INSERT INTO {s}.jobs (id, type, payload, status, priority, max_attempts, created_at,"
        " ready_at) VALUES"
        " ('later', 't', '1', 'pending', 3, 3, now(), now() + interval '1 hour'),"
        " ('now', 't', '2', 'pending', 1, 3, now(), now())"
    )
    async with PostgresStorage(PG_DSN, schema=pg_schema) as store:
        assert await store.migrate() == _sql.LATEST_VERSION >= 2
        flags = dict(await admin_async(f"SELECT id, delayed FROM {s}.jobs"))
        assert flags == {"later": True, "now": False}
        assert [job.id for job in await store.claim("w", 5)] == ["now"]
        assert await store.workers() == []


# -- the workers table ------------------------------------------------------------


async def test_the_store_is_a_worker_registry(make_store: MakeStore) -> None:
    assert isinstance(await make_store(), WorkerRegistry)


async def test_workers_lists_registered_workers_oldest_start_first(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    early = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    late = early + timedelta(hours=1)
    await store.register_worker(info("late", started=late, job_types=frozenset({"a", "b"})))
    await store.register_worker(info("early", started=early, concurrency=3, running=2))
    workers = await store.workers()
    assert [w.worker_id for w in workers] == ["early", "late"]
    first = workers[0]
    assert first.started_at == early
    assert first.started_at.tzinfo is UTC
    assert first.last_seen.tzinfo is UTC
    assert (first.hostname, first.pid, first.concurrency, first.running) == ("host-a", 4242, 3, 2)
    assert workers[1].job_types == frozenset({"a", "b"})
    assert isinstance(workers[1].job_types, frozenset)
    # Registering again replaces the row (e.g. its job types changed).
    await store.register_worker(info("late", started=late, job_types=frozenset({"c"})))
    assert [w.job_types for w in await store.workers()] == [frozenset({"t"}), frozenset({"c"})]


async def test_an_expired_or_unregistered_worker_is_not_listed(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await store.register_worker(info("a"))
    await store.register_worker(info("b"))
    await expire_worker(pg_schema, "a")
    assert [w.worker_id for w in await store.workers()] == ["b"]
    await store.unregister_worker("b")
    await store.unregister_worker("b")  # idempotent
    assert await store.workers() == []


async def test_a_registered_workers_heartbeat_renews_its_row_not_its_jobs(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store(lease_duration=600.0)
    await fill(pg_schema, 3)
    await store.register_worker(info("w"))
    jobs = await store.claim("w", 3)
    leases = {job.id: (await job_row(pg_schema, job.id, "lease_expires_at"))[0] for job in jobs}
    await admin_async(
        f"UPDATE \"{pg_schema}\".workers SET expires_at = now() + interval '1 second',"
        " last_seen = now() - interval '1 hour'"
    )
    beat = await store.heartbeat("w", [job.id for job in jobs])
    assert beat == Heartbeat()
    for job in jobs:  # no job was written
        assert (await job_row(pg_schema, job.id, "lease_expires_at"))[0] == leases[job.id]
    [(running, renewed, seen_recently)] = await admin_async(
        f"SELECT running, expires_at > now() + interval '500 seconds',"
        f" last_seen > now() - interval '1 minute' FROM \"{pg_schema}\".workers"
    )
    assert (running, renewed, seen_recently) == (3, True, True)


async def test_a_registered_worker_holding_nothing_still_renews_its_row(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store(lease_duration=600.0)
    await store.register_worker(info("idle", running=5))
    await expire_worker(pg_schema, "idle")
    assert await store.workers() == []
    await store.heartbeat("idle", [])
    [worker] = await store.workers()
    assert worker.running == 0


async def test_a_registered_workers_heartbeat_reports_cancel_requests_and_lost_jobs(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await fill(pg_schema, 3)
    await store.register_worker(info("w"))
    a, b, c = (job.id for job in await store.claim("w", 3))
    await store.request_cancel(a)
    await store.delete(b)
    beat = await store.heartbeat("w", [a, b, c, "never-claimed"])
    assert beat.cancel_requested == {a}
    assert beat.lost == {b, "never-claimed"}


async def test_a_worker_without_a_row_renews_its_jobs_leases_as_before(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store(lease_duration=600.0)
    await fill(pg_schema, 2)
    await store.register_worker(info("someone-else"))
    jobs = await store.claim("w", 2)
    await expire_leases(pg_schema, "w")
    beat = await store.heartbeat("w", [jobs[0].id])
    assert beat.lost == frozenset()
    renewed = [(await job_row(pg_schema, job.id, "lease_expires_at > now()"))[0] for job in jobs]
    assert renewed == [True, False]
    # The unnamed one expired: rescued, as before; the renewed one is not.
    assert [job.id for job in await store.rescue_expired()] == [jobs[1].id]
    assert (await store.get(jobs[0].id)).status is JobStatus.RUNNING  # type: ignore[union-attr]
    # And with nothing to renew, a worker without a row makes no round trip.
    assert await store.heartbeat("w", []) == Heartbeat()


# -- rescue -----------------------------------------------------------------------


async def test_rescue_takes_a_stale_workers_jobs_and_drops_its_row(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await fill(pg_schema, 4)
    for worker in ("dead", "alive"):
        await store.register_worker(info(worker))
    dead_jobs = await store.claim("dead", 2)
    alive_jobs = await store.claim("alive", 2)
    # Registered workers' job leases are never renewed: only their rows count.
    await expire_leases(pg_schema, "alive")
    await expire_leases(pg_schema, "dead")
    await expire_worker(pg_schema, "dead")
    rescued = await store.rescue_expired()
    assert sorted(job.id for job in rescued) == sorted(job.id for job in dead_jobs)
    for job in rescued:
        assert job.status is JobStatus.PENDING
        assert job.attempts == 1  # the crashed attempt counts
        assert job.last_error is not None
        assert job.last_error.type == "WorkerLostError"
        assert "worker dead was lost" in job.last_error.message
    assert [w.worker_id for w in await store.workers()] == ["alive"]
    assert await admin_async(f'SELECT worker_id FROM "{pg_schema}".workers') == [("alive",)]
    for job in alive_jobs:
        assert (await store.get(job.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert await store.rescue_expired() == []


async def test_a_stale_worker_on_its_last_attempt_fails_and_a_cancelled_one_ends_cancelled(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await store.save(Job(id="last", type="t", max_attempts=1))
    await store.save(Job(id="cancel-me", type="t"))
    await store.register_worker(info("dead"))
    assert len(await store.claim("dead", 2)) == 2
    await store.request_cancel("cancel-me")
    await expire_worker(pg_schema, "dead")
    rescued = {job.id: job for job in await store.rescue_expired()}
    assert rescued["last"].status is JobStatus.FAILED
    assert rescued["cancel-me"].status is JobStatus.CANCELLED


async def test_a_worker_back_after_its_row_went_stale_hears_its_jobs_are_lost(
    make_store: MakeStore, pg_schema: str
) -> None:
    store, rescuer = await make_store(), await make_store()
    await fill(pg_schema, 2)
    await store.register_worker(info("paused"))
    jobs = await store.claim("paused", 2)
    await expire_worker(pg_schema, "paused")
    assert len(await rescuer.rescue_expired()) == 2
    # Without a row its heartbeat falls back to per-job leases; the jobs are gone.
    beat = await store.heartbeat("paused", [job.id for job in jobs])
    assert beat == Heartbeat(lost=frozenset(job.id for job in jobs))
    # Registered again: still lost, and new claims are its own.
    await store.register_worker(info("paused"))
    beat = await store.heartbeat("paused", [job.id for job in jobs])
    assert beat.lost == {job.id for job in jobs}
    again = await store.claim("paused", 2)
    assert (await store.heartbeat("paused", [job.id for job in again])).lost == frozenset()


async def test_jobs_of_a_worker_without_a_row_are_rescued_only_once_their_lease_expired(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store(lease_duration=600.0)
    await fill(pg_schema, 3)
    await store.register_worker(info("registered"))
    expired, kept = await store.claim("legacy-1", 1), await store.claim("legacy-2", 1)
    await expire_leases(pg_schema, "legacy-1")
    assert [job.id for job in await store.rescue_expired()] == [expired[0].id]
    assert (await store.get(kept[0].id)).status is JobStatus.RUNNING  # type: ignore[union-attr]


async def test_an_unregistered_workers_leftover_jobs_are_rescued_once_their_claim_expired(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await fill(pg_schema, 1)
    await store.register_worker(info("w"))
    [job] = await store.claim("w", 1)
    await store.unregister_worker("w")
    assert await store.rescue_expired() == []  # its claim's lease still runs
    await expire_leases(pg_schema, "w")
    assert [j.id for j in await store.rescue_expired()] == [job.id]


async def test_many_stores_rescuing_at_once_rescue_each_stale_job_once(
    make_store: MakeStore, pg_schema: str
) -> None:
    stores = [await make_store() for _ in range(4)]
    await fill(pg_schema, 60)
    for k in range(3):
        await stores[0].register_worker(info(f"dead-{k}"))
        assert len(await stores[0].claim(f"dead-{k}", 20)) == 20
        await expire_worker(pg_schema, f"dead-{k}")
    rescued: list[str] = []

    async def rescue(store: PostgresStorage) -> None:
        rescued.extend(job.id for job in await store.rescue_expired())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(rescue, store)
        # A job skipped because another rescuer held it is rescued by a later pass.
        while len(rescued) < 60:
            rescued.extend(job.id for job in await stores[0].rescue_expired())
    assert len(rescued) == len(set(rescued)) == 60
    assert await admin_async(f'SELECT count(*) FROM "{pg_schema}".workers') == [(0,)]


@pytest.mark.parametrize("plan", ["custom", "generic"])
@pytest.mark.parametrize("live_workers", ["registered", "without a row"])
async def test_rescue_reads_the_stale_workers_jobs_not_every_running_one(
    make_store: MakeStore, pg_schema: str, plan: str, live_workers: str
) -> None:
    # Lost-worker detection used to read every running row, in every worker,
    # every poll_interval. Now it reads the stale workers' jobs (and one index
    # probe per worker holding jobs), however many jobs live workers run.
    store = await make_store(lease_duration=600.0)
    live, per_worker, stale_jobs = 20, 100, 10
    await fill(pg_schema, live * per_worker + stale_jobs)
    for k in range(live):
        if live_workers == "registered":
            await store.register_worker(info(f"live-{k}"))
        assert len(await store.claim(f"live-{k}", per_worker)) == per_worker
    if live_workers == "registered":  # their claims' leases ran out long ago
        await admin_async(
            f"UPDATE \"{pg_schema}\".jobs SET lease_expires_at = now() - interval '1 hour'"
        )
    await store.register_worker(info("dead"))
    assert len(await store.claim("dead", stale_jobs)) == stale_jobs
    await expire_worker(pg_schema, "dead")
    await admin_async(f'VACUUM ANALYZE "{pg_schema}".jobs')
    params = {"changed_channel": "c", "work_channel": "w"}

    def rescue_and_count_rows_read() -> tuple[int, int]:
        with psycopg.connect(PG_DSN) as conn:  # one transaction, rolled back
            conn.execute(f"SET plan_cache_mode = force_{plan}_plan")
            rescued = len(conn.execute(store._sql.rescue, params, prepare=True).fetchall())
            read = rows_read(conn, pg_schema)
            conn.rollback()
            return rescued, read

    rescued, read = await trio.to_thread.run_sync(rescue_and_count_rows_read)
    assert rescued == stale_jobs
    # The stale worker's jobs, read and re-read by the update, and one probe per worker.
    assert read <= 4 * stale_jobs + 2 * (live + 1), read


async def test_a_registered_worker_gives_up_jobs_it_holds_without_naming_them(
    make_store: MakeStore, pg_schema: str
) -> None:
    # A claim whose answer was lost, a settle given up on: the worker does not
    # name the job any more; once its claim's lease ran out it is rescued.
    store = await make_store()
    await fill(pg_schema, 3)
    await store.register_worker(info("w"))
    named, forgotten, recent = (job.id for job in await store.claim("w", 3))
    await admin_async(
        f"UPDATE \"{pg_schema}\".jobs SET lease_expires_at = now() - interval '1 second'"
        " WHERE id IN (%s, %s)",
        (named, forgotten),
    )
    beat = await store.heartbeat("w", [named])
    assert beat.lost == frozenset()
    job = await store.get(forgotten)
    assert job is not None
    assert job.status is JobStatus.PENDING
    assert job.last_error is not None
    assert job.last_error.type == "WorkerLostError"
    for job_id in (named, recent):  # named, or claimed less than a lease ago: kept
        assert (await store.get(job_id)).status is JobStatus.RUNNING  # type: ignore[union-attr]


async def test_a_failed_rescue_of_unnamed_jobs_does_not_fail_the_heartbeat(
    make_store: MakeStore, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat that raises makes the runner fence (cancel) its attempts.
    store = await make_store()
    await fill(pg_schema, 2)
    await store.register_worker(info("w"))
    named, forgotten = (job.id for job in await store.claim("w", 2))
    await expire_leases(pg_schema, "w")

    async def broken(*args: Any, **kwargs: Any) -> list[Job[Any]]:
        raise psycopg.OperationalError("the database went away")

    monkeypatch.setattr(store, "_rescue", broken)
    assert await store.heartbeat("w", [named]) == Heartbeat()
    monkeypatch.undo()
    await store.heartbeat("w", [named])  # the next one rescues it
    assert (await store.get(forgotten)).status is JobStatus.PENDING  # type: ignore[union-attr]


# -- delayed jobs -----------------------------------------------------------------


async def test_delayed_jobs_keep_priority_and_fifo_order_once_due(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await store.save(Job(id="high-later", type="t", priority=JobPriority.HIGH), delay=3600)
    await store.save(Job(id="normal-1", type="t"))
    await store.save(Job(id="high-soon", type="t", priority=JobPriority.HIGH), delay=3600)
    await store.save(Job(id="normal-2", type="t"))
    flags = dict(await admin_async(f'SELECT id, delayed FROM "{pg_schema}".jobs'))
    assert flags == {"high-later": True, "normal-1": False, "high-soon": True, "normal-2": False}
    assert [job.id for job in await store.claim("w", 1)] == ["normal-1"]
    # Their time comes (the server's clock, moved by rewriting ready_at).
    await admin_async(
        f'UPDATE "{pg_schema}".jobs SET ready_at = now() - CASE id'
        " WHEN 'high-soon' THEN interval '2 seconds' ELSE interval '1 second' END"
        " WHERE id LIKE 'high-%%'"
    )
    claimed = await store.claim("w", 3)
    assert [job.id for job in claimed] == ["high-soon", "high-later", "normal-2"]
    assert await admin_async(f'SELECT count(*) FROM "{pg_schema}".jobs WHERE delayed') == [(0,)]


async def test_due_jobs_not_claimed_are_promoted_for_the_next_claims(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    count = _sql.PROMOTE_MAX + 30
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(partial(store.save, Job(id=f"d{i:04}", type="t"), delay=3600.0))
    await admin_async(f"UPDATE \"{pg_schema}\".jobs SET ready_at = now() - interval '1 second'")
    first = await store.claim("w", 1)
    assert len(first) == 1
    [(still_delayed,)] = await admin_async(f'SELECT count(*) FROM "{pg_schema}".jobs WHERE delayed')
    assert still_delayed == count - _sql.PROMOTE_MAX
    claimed = list(first)
    while batch := await store.claim("w", 32):
        claimed.extend(batch)
    assert len({job.id for job in claimed}) == count


async def test_a_retry_backoff_is_delayed_and_claimable_once_due(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    await store.save(Job(id="r", type="t"))
    [job] = await store.claim("w", 1)
    assert await store.settle(
        "r", worker_id="w", attempt=job.attempts, status=JobStatus.RETRYING, delay=3600
    )
    assert await job_row(pg_schema, "r", "delayed, status") == (True, "retrying")
    assert await store.claim("w", 1) == []
    await admin_async(f"UPDATE \"{pg_schema}\".jobs SET ready_at = now() - interval '1 second'")
    [again] = await store.claim("w", 1)
    assert (again.id, again.attempts) == ("r", 2)


async def test_administrative_writes_set_the_delayed_flag_from_run_at(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.update(Job(id="new-later", type="t", run_at=later))
    await store.save(Job(id="x", type="t"))
    job = await store.get("x")
    assert job is not None
    await store.update(attrs.evolve(job, run_at=later))
    assert dict(await admin_async(f'SELECT id, delayed FROM "{pg_schema}".jobs')) == {
        "new-later": True,
        "x": True,
    }
    await store.update(attrs.evolve(job, status=JobStatus.COMPLETED))
    assert await job_row(pg_schema, "x", "delayed") == (False,)
    assert await store.claim("w", 5) == []


@pytest.mark.parametrize("plan", ["custom", "generic"])
async def test_a_claim_does_not_walk_past_delayed_jobs(
    make_store: MakeStore, pg_schema: str, plan: str
) -> None:
    # Delayed HIGH jobs sat in the claim's index before the ready NORMAL ones:
    # a claim walked past every one of them.
    store = await make_store()
    delayed = 5000
    await admin_async(
        f'INSERT INTO "{pg_schema}".jobs (id, type, payload, status, priority, max_attempts,'
        " created_at, ready_at, delayed) SELECT 'd' || i, 't', 'null', 'pending', 2, 3, now(),"
        f" now() + interval '1 hour', true FROM generate_series(1, {delayed}) AS i"
    )
    await fill(pg_schema, 20)
    await admin_async(f'VACUUM ANALYZE "{pg_schema}".jobs')
    statement = store._sql.claim_for(1, typed=True, durable=False)
    params = {"limit": 1, "worker_id": "w", "lease": 30.0, "types": ["t"], "token": "x"}

    def claim_and_count_rows_read() -> tuple[list[str], int]:
        with psycopg.connect(PG_DSN) as conn:
            conn.execute(f"SET plan_cache_mode = force_{plan}_plan")
            ids = [row[0] for row in conn.execute(statement, params, prepare=True).fetchall()]
            read = rows_read(conn, pg_schema)
            conn.rollback()
            return ids, read

    ids, read = await trio.to_thread.run_sync(claim_and_count_rows_read)
    assert ids == ["j1"]
    assert read <= 10, read


# -- the idle LISTEN thread -------------------------------------------------------


async def test_an_idle_store_never_calls_into_trio_and_a_notify_wakes_its_waiter(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    listener = store._listener
    assert listener is not None
    calls: list[Any] = []
    post = listener._post

    def counting_post(fn: Callable[..., object], *args: object) -> bool:
        calls.append(fn)
        return post(fn, *args)

    listener._post = counting_post  # type: ignore[method-assign]
    await trio.sleep(0.5)  # (idle: nothing may happen, however long this is)
    assert calls == []
    woken = trio.Event()

    async def wait() -> None:
        await store.wait_for_work(3600.0)  # the poll would come in an hour
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        # A plain NOTIFY from another connection, as another process's save sends.
        await admin_async("SELECT pg_notify(%s, '0')", (f"{store.schema}.work",))
        with trio.fail_after(DEADLINE):
            await woken.wait()
    assert len(calls) == 1


async def test_a_parked_claim_takes_a_job_announced_by_another_process(
    make_store: MakeStore, pg_schema: str
) -> None:
    store = await make_store()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:

            async def produce() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await fill(pg_schema, 1)
                await admin_async("SELECT pg_notify(%s, '0')", (f"{pg_schema}.work",))

            nursery.start_soon(produce)
            jobs = await store.wait_and_claim("w", 5, ["t"], 3600.0)
    assert [job.id for job in jobs or []] == ["j1"]


async def test_notifications_in_one_packet_with_work_are_all_delivered(
    make_store: MakeStore, pg_schema: str
) -> None:
    # The thread used to stop reading a batch at the first work notification
    # (to run the parked claim), dropping what came after it in the same packet.
    store = await make_store()
    await fill(pg_schema, 1)
    cancelled = trio.Event()

    async def wait_cancel() -> None:
        await store.wait_for_cancel_request(3600.0)
        cancelled.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_cancel)

            async def produce() -> None:
                await trio.testing.wait_all_tasks_blocked()
                # One transaction: both notifications reach the listener together.
                await admin_async(
                    "SELECT pg_notify(%s, '0'), pg_notify(%s, 'x')",
                    (f"{pg_schema}.work", f"{pg_schema}.cancel"),
                )

            nursery.start_soon(produce)
            jobs = await store.wait_and_claim("w", 5, ["t"], 3600.0)
            assert [job.id for job in jobs or []] == ["j1"]
            await cancelled.wait()


def test_the_listener_thread_ends_with_the_trio_run_even_without_close(pg_schema: str) -> None:
    def listener_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "trio_jobs postgres LISTEN"]

    before = len(listener_threads())

    async def leave_open() -> None:
        store = PostgresStorage(PG_DSN, schema=pg_schema)
        await store.open()
        with trio.fail_after(DEADLINE):
            while len(listener_threads()) == before:  # noqa: ASYNC110 (a thread is no event)
                await trio.sleep(0.01)

    trio.run(leave_open)
    for thread in listener_threads()[before:]:
        thread.join(DEADLINE)
    assert len(listener_threads()) == before


async def test_payloads_of_saved_jobs_are_unchanged_by_the_delayed_column(
    make_store: MakeStore,
) -> None:
    # (The insert lists its columns; a slip would shift values between them.)
    store = await make_store()
    await store.save(Job(id="p", type="t", payload={"a": [1, 2]}, metadata={"m": 1}), delay=0.5)
    job = await store.get("p")
    assert job is not None
    assert (job.payload, dict(job.metadata), job.status) == (
        {"a": [1, 2]},
        {"m": 1},
        JobStatus.PENDING,
    )
