"""PostgresStorage against the real server: what only PostgreSQL has to get right.

The protocol's behaviour is tested for every store in test_storage_contract.py;
here: migrations, SKIP LOCKED claims under real concurrency, LISTEN/NOTIFY
wake-ups, connection loss, and the batching of settles. Every test uses its own
schema. Real time appears only as generous ``fail_after`` deadlines: a wait that
should be woken by a notification is given a 30 s timeout, so the deadline of 5 s
fails the test if the notification never arrives.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from pg_admin import PG_DSN, MakeStore, admin, admin_async
from trio_jobs import (
    CancelOutcome,
    ErrorInfo,
    Job,
    JobPriority,
    JobStatus,
    PostgresStorage,
    StorageCorruptError,
)
from trio_jobs.storage.postgres import _sql
from trio_jobs.storage.postgres._batch import ClaimRequest, SettleRequest, _settle_record

pytestmark = pytest.mark.slow

WAKE_TIMEOUT = 30.0  # what a waiter asks for; a notification must beat it by far
DEADLINE = 5.0  # the test fails if the notification has not arrived by then


async def backend_pids(application_name: str) -> set[int]:
    rows = await admin_async(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    )
    return {row[0] for row in rows}


async def terminate(pids: set[int]) -> None:
    await admin_async(
        "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(pids),)
    )


async def save_jobs(store: PostgresStorage, count: int, job_type: str = "t") -> list[str]:
    ids = [f"{job_type}-{i}" for i in range(count)]
    for job_id in ids:
        await store.save(Job(id=job_id, type=job_type))
    return ids


# -- construction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lease_duration": 0}, ValueError, "lease_duration"),
        ({"lease_duration": -1.0}, ValueError, "lease_duration"),
        ({"lease_duration": math.nan}, ValueError, "lease_duration"),
        ({"lease_duration": "30"}, TypeError, "lease_duration"),
        ({"min_connections": 0}, ValueError, "min_connections"),
        ({"min_connections": 1.5}, TypeError, "min_connections"),
        ({"min_connections": 5, "max_connections": 4}, ValueError, "max_connections"),
        ({"max_connections": True}, TypeError, "max_connections"),
        ({"schema": "a-b"}, ValueError, "schema"),
        ({"schema": 'x"; DROP TABLE y; --'}, ValueError, "schema"),
        ({"schema": "1abc"}, ValueError, "schema"),
        ({"schema": "s" * 60}, ValueError, "schema"),
        ({"schema": None}, TypeError, "schema"),
    ],
)
def test_constructor_rejects_bad_arguments_naming_them(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        PostgresStorage(PG_DSN, **kwargs)


def test_dsn_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="dsn"):
        PostgresStorage(b"postgresql://x")  # type: ignore[arg-type]


def test_the_package_imports_without_psycopg_and_open_says_what_to_install() -> None:
    code = """
import sys, trio
sys.modules["psycopg"] = None
sys.modules["psycopg_pool"] = None
import trio_jobs
store = trio_jobs.PostgresStorage("postgresql://nowhere/x")
try:
    trio.run(store.open)
except ImportError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "pip install 'trio-jobs[postgres]'" in out


async def test_methods_of_an_unopened_store_say_it_is_not_open(pg_schema: str) -> None:
    store = PostgresStorage(PG_DSN, schema=pg_schema)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("x")
    with pytest.raises(RuntimeError, match="not open"):
        await store.save(Job(id="x", type="t"))
    with pytest.raises(RuntimeError, match="not open"):
        await store.settle("x", worker_id="w", attempt=1, status=JobStatus.COMPLETED)


# -- migrations -------------------------------------------------------------------


async def test_migrate_creates_the_schema_at_the_latest_version_once(pg_schema: str) -> None:
    store = PostgresStorage(PG_DSN, schema=pg_schema)
    # The CLI migrates without opening the store.
    assert await store.migrate() == _sql.LATEST_VERSION
    assert await store.migrate() == _sql.LATEST_VERSION
    versions = await admin_async(f'SELECT version FROM "{pg_schema}".schema_version')
    assert versions == [(v,) for v, _ in _sql.MIGRATIONS]


async def test_a_version_5_schema_loses_the_index_retention_makes_redundant(
    pg_schema: str,
) -> None:
    # Migration 6: jobs_retention_idx (status, completed_at) serves every query
    # that jobs_completed_idx did; a schema at version 5 drops it when migrated.
    store = PostgresStorage(PG_DSN, schema=pg_schema)
    await store.migrate()
    await admin_async(f'DELETE FROM "{pg_schema}".schema_version WHERE version >= 6')
    await admin_async(
        f'CREATE INDEX jobs_completed_idx ON "{pg_schema}".jobs (completed_at)'
        " WHERE completed_at IS NOT NULL"
    )

    assert await store.migrate() == _sql.LATEST_VERSION

    indexes = await admin_async(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
    )
    names = {row[0] for row in indexes}
    assert "jobs_retention_idx" in names
    assert "jobs_completed_idx" not in names


async def test_a_version_6_schema_trades_its_seq_indexes_for_one_by_type_and_status(
    pg_schema: str,
) -> None:
    # Migration 7: every index costs each claim and settle a write; paging merges
    # one walk per status instead of walking (seq) or (type, seq), and the status
    # indexes leave running jobs out.
    async with PostgresStorage(PG_DSN, schema=pg_schema) as first:
        await first.save(Job(id="kept", type="t"))
    store = PostgresStorage(PG_DSN, schema=pg_schema)
    jobs = f'"{pg_schema}".jobs'
    await admin_async(f'DELETE FROM "{pg_schema}".schema_version WHERE version = 7')
    await admin_async(f'DROP INDEX "{pg_schema}".jobs_type_status_idx')
    await admin_async(f'DROP INDEX "{pg_schema}".jobs_status_idx')
    await admin_async(f"CREATE INDEX jobs_status_idx ON {jobs} (status, seq)")
    await admin_async(f"CREATE INDEX jobs_seq_idx ON {jobs} (seq)")
    await admin_async(f"CREATE INDEX jobs_type_seq_idx ON {jobs} (type, seq)")

    assert await store.migrate() == 7

    indexes = await admin_async(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (pg_schema,)
    )
    definitions = dict(indexes)
    assert not definitions.keys() & {"jobs_seq_idx", "jobs_type_seq_idx"}
    # Neither status index holds running jobs: a claim writes neither.
    for name in ("jobs_status_idx", "jobs_type_status_idx"):
        assert definitions[name].endswith("WHERE (status <> 'running'::text)")
    async with store:
        assert [job.id for job in (await store.browse_jobs()).jobs] == ["kept"]


@pytest.mark.parametrize("filters", [{}, {"job_type": "t3"}, {"cursor": "1500"}])
async def test_a_page_of_every_status_reads_a_page_per_status_not_the_table(
    make_store: MakeStore, pg_schema: str, filters: dict[str, Any]
) -> None:
    # 3,000 jobs over every status but running, and 12 running: the page merges
    # one index walk per status, each stopping after a page (no scan of the table,
    # no sort of all its rows); the running jobs, few, come from their own index.
    store = await make_store()
    waiting = [status for status in _sql.STATUSES if status != "running"]
    await admin_async(
        f"""
        INSERT INTO "{pg_schema}".jobs (id, type, payload, status, priority, max_attempts,
            created_at, ready_at, worker_id)
        SELECT 'j' || g, 't' || (g % 4), '{{}}',
            CASE WHEN g % 250 = 0 THEN 'running' ELSE (ARRAY{waiting})[1 + g % 6] END,
            1, 3, now(), now(), CASE WHEN g % 250 = 0 THEN 'w' END
        FROM generate_series(1, 3000) AS g
        """
    )
    await admin_async(f'ANALYZE "{pg_schema}".jobs')
    captured: list[Any] = []
    real = psycopg.Connection.execute

    def spy(self: psycopg.Connection[Any], query: Any, params: Any = None, **kw: Any) -> Any:
        if "UNION ALL" in str(query):
            explained = real(self, f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params)
            captured.append(explained.fetchone()[0])  # type: ignore[index]
        return real(self, query, params, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.Connection, "execute", spy)
        page = await store.browse_jobs(limit=20, **filters)

    assert len(page.jobs) == 20
    [plan] = captured

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", ()) for n in nodes(child))]

    scans = [n for n in nodes(plan[0]["Plan"]) if "Scan" in n["Node Type"]]
    assert len(scans) == len(_sql.STATUSES)
    assert {n["Node Type"] for n in scans} <= {"Index Scan", "Index Scan Backward"}
    running = [n for n in scans if n["Index Name"] == "jobs_worker_idx"]
    assert len(running) == 1
    assert running[0]["Actual Rows"] + running[0].get("Rows Removed by Filter", 0) <= 12
    for scan in scans:
        if scan not in running:
            assert scan["Actual Rows"] <= 21
            assert scan.get("Rows Removed by Filter", 0) == 0  # the index matches


async def test_reopening_migrates_nothing_and_keeps_the_jobs(make_store: MakeStore) -> None:
    first = await make_store()
    await first.save(Job(id="kept", type="t", payload={"n": 1}))
    await first.close()
    second = await make_store()
    assert await second.migrate() == _sql.LATEST_VERSION
    job = await second.get("kept")
    assert job is not None
    assert job.payload == {"n": 1}


async def test_stores_opening_together_on_a_fresh_schema_all_succeed(
    make_store: MakeStore, pg_schema: str
) -> None:
    opened: list[PostgresStorage] = []

    async def open_one() -> None:
        opened.append(await make_store())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(open_one)
    assert len(opened) == 4
    versions = await admin_async(f'SELECT version FROM "{pg_schema}".schema_version')
    assert versions == [(v,) for v, _ in _sql.MIGRATIONS]
    # And they share one queue.
    await opened[0].save(Job(id="shared", type="t"))
    claimed = await opened[3].claim("w", 5)
    assert [job.id for job in claimed] == ["shared"]


async def test_a_worker_role_without_create_rights_opens_a_migrated_schema(
    pg_schema: str,
) -> None:
    role = f"tj_worker_{pg_schema[-12:]}"
    await PostgresStorage(PG_DSN, schema=pg_schema).migrate()
    await admin_async(f'CREATE ROLE "{role}" LOGIN')
    try:
        await admin_async(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO "{role}"')
        await admin_async(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{pg_schema}"'
            f' TO "{role}"'
        )
        await admin_async(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{pg_schema}" TO "{role}"')
        dsn = psycopg.conninfo.make_conninfo(PG_DSN, user=role)
        async with PostgresStorage(dsn, schema=pg_schema) as store:
            await store.save(Job(id="j", type="t"))
            assert [job.id for job in await store.claim("w", 1)] == ["j"]
    finally:
        await admin_async(f'DROP OWNED BY "{role}"')
        await admin_async(f'DROP ROLE "{role}"')


# -- claims -----------------------------------------------------------------------


async def test_concurrent_claimers_on_separate_connections_never_share_a_job(
    make_store: MakeStore,
) -> None:
    stores = [await make_store(max_connections=3) for _ in range(4)]
    ids = await save_jobs(stores[0], 300)
    limit = 7
    claimed: list[str] = []
    sizes: list[int] = []

    async def claimer(store: PostgresStorage, worker: str) -> None:
        while True:
            jobs = await store.claim(worker, limit)
            if not jobs:
                return
            sizes.append(len(jobs))
            claimed.extend(job.id for job in jobs)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n, store in enumerate(stores):
                for task in range(3):
                    nursery.start_soon(claimer, store, f"w{n}.{task}")

    assert max(sizes) <= limit
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert sorted(claimed) == sorted(ids)
    assert (await stores[0].get_stats()).running == 300


async def test_concurrent_claimers_in_plain_threads_never_share_a_job(
    make_store: MakeStore, pg_schema: str
) -> None:
    # The claim statement itself, from many connections at once, without Trio.
    store = await make_store()
    ids = await save_jobs(store, 200)
    statement = store._sql.claim
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            while rows := conn.execute(
                statement,
                {"limit": 3, "worker_id": worker, "lease": 30.0, "types": None, "token": None},
            ).fetchall():
                assert len(rows) <= 3
                with lock:
                    claimed.extend(row[0] for row in rows)

    def run_all() -> None:
        threads = [threading.Thread(target=claimer, args=(f"t{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with trio.fail_after(60):
        await trio.to_thread.run_sync(run_all)
    assert sorted(claimed) == sorted(ids)


async def test_claim_orders_by_priority_then_submission_across_types(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    await store.save(Job(id="low", type="a", priority=JobPriority.LOW))
    await store.save(Job(id="n1", type="b"))
    await store.save(Job(id="crit", type="a", priority=JobPriority.CRITICAL))
    await store.save(Job(id="n2", type="a"))
    assert [j.id for j in await store.claim("w", 10, job_types=["a"])] == ["crit", "n2", "low"]
    assert [j.id for j in await store.claim("w", 10, job_types=[])] == []
    assert [j.id for j in await store.claim("w", 10)] == ["n1"]


@pytest.mark.parametrize(
    "limit",
    # Up to LITERAL_LIMIT_MAX the limit is written into the statement; above, a parameter.
    [1, 7, _sql.LITERAL_LIMIT_MAX, _sql.LITERAL_LIMIT_MAX + 1],
)
@pytest.mark.parametrize("typed", [False, True], ids=["any type", "typed"])
async def test_a_claim_takes_its_limit_in_claim_order_and_no_more(
    make_store: MakeStore, limit: int, typed: bool
) -> None:
    store = await make_store()
    ids = await save_jobs(store, limit + 3)
    job_types = ["t"] if typed else None
    assert [j.id for j in await store.claim("w", limit, job_types)] == ids[:limit]
    assert [j.id for j in await store.claim("w", limit, job_types)] == ids[limit : 2 * limit]


async def test_a_repeated_claim_is_planned_once_not_every_time(
    make_store: MakeStore, pg_schema: str
) -> None:
    # PostgreSQL re-plans a prepared statement on every run unless the plan it
    # makes once (generic) looks no worse than one made for the actual values.
    # Planning a claim cost more server time than running it.
    # (With a LIMIT parameter, the plan made once looks worse once the table holds
    # more than ten times the limit: the planner guesses a tenth of it.)
    store = await make_store()
    await admin_async(
        f'INSERT INTO "{pg_schema}".jobs (id, type, payload, status, priority, max_attempts,'
        " created_at, ready_at) SELECT 'j' || i, 't', 'null', 'pending', 0, 1, now(), now()"
        " FROM generate_series(1, 1000) AS i"
    )
    await admin_async(f'ANALYZE "{pg_schema}".jobs')
    runs = 9

    def claim_repeatedly() -> list[tuple[Any, ...]]:
        with psycopg.connect(PG_DSN, autocommit=True, prepare_threshold=0) as conn:
            for _ in range(runs):
                request = ClaimRequest(worker_id="w", limit=3, types=None, lease=30.0)
                assert len(store._writers.claim_now(request, conn)) == 3
            conn.prepare_threshold = None  # (this query is not one to count)
            return conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%%SKIP LOCKED%%'"
            ).fetchall()

    [(generic, custom)] = await trio.to_thread.run_sync(claim_repeatedly)
    assert generic + custom == runs
    assert generic >= runs - 5  # PostgreSQL tries 5 custom plans before it compares


# -- settles ----------------------------------------------------------------------


async def test_concurrent_settles_each_get_their_own_answer(make_store: MakeStore) -> None:
    # Settles made together are written in one statement; each caller must still
    # learn whether *its* settle applied.
    store = await make_store()
    await save_jobs(store, 40)
    jobs = await store.claim("w", 40)
    answers: dict[str, bool] = {}

    async def settle(job: Job[Any], n: int) -> None:
        stale = n % 3 == 0
        answers[job.id] = await store.settle(
            job.id,
            worker_id="w",
            attempt=job.attempts + (1 if stale else 0),
            status=JobStatus.COMPLETED if n % 2 else JobStatus.RETRYING,
            result={"n": n},
            error=None if n % 2 else ErrorInfo(message="again", type="ValueError", attempt=1),
            delay=0.0,
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for n, job in enumerate(jobs):
                nursery.start_soon(settle, job, n)

    for n, job in enumerate(jobs):
        assert answers[job.id] is (n % 3 != 0)
        stored = await store.get(job.id)
        assert stored is not None
        if n % 3 == 0:
            assert stored.status is JobStatus.RUNNING
        elif n % 2:
            assert (stored.status, stored.result) == (JobStatus.COMPLETED, {"n": n})
        else:
            assert stored.status is JobStatus.RETRYING
            assert stored.last_error is not None
            assert stored.last_error.message == "again"


async def test_settles_ending_together_and_the_next_claim_share_one_round_trip(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's attempts that end in the same turn free their slots together; their
    # settles and the claim that refills the slots go in one transaction.
    store = await make_store()
    await save_jobs(store, 15)
    running = await store.claim("w", 10)
    trips = 0
    run = store._cycle._run

    async def counted(fn: Any) -> Any:
        nonlocal trips
        trips += 1
        return await run(fn)

    monkeypatch.setattr(store._cycle, "_run", counted)
    settled: list[bool] = []
    claimed: list[Job[Any]] = []

    async def settle(job: Job[Any]) -> None:
        settled.append(
            await store.settle(job.id, worker_id="w", attempt=1, status=JobStatus.COMPLETED)
        )

    async def claim() -> None:
        claimed.extend(await store.claim("w", 10))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for job in running:
                nursery.start_soon(settle, job)
            nursery.start_soon(claim)
    assert trips == 1
    assert settled == [True] * 10
    assert sorted(job.id for job in claimed) == sorted(f"t-{i}" for i in range(10, 15))
    stats = await store.get_stats()
    assert (stats.completed, stats.running, stats.pending) == (10, 5, 0)


async def test_concurrent_saves_each_get_their_own_answer(make_store: MakeStore) -> None:
    # Saves made together are inserted in one statement; a duplicate id must
    # still fail for its caller alone, and every field must survive the trip.
    store = await make_store()
    await store.save(Job(id="old", type="t"))
    created = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    jobs = [
        Job(id=f"j{n}", type="t", payload={"n": n, "f": 0.1}, timeout=math.inf, created_at=created)
        for n in range(30)
    ]
    jobs += [Job(id="old", type="t"), Job(id="twice", type="t"), Job(id="twice", type="t")]
    answers: list[tuple[str, BaseException | None]] = []

    async def save(job: Job[Any]) -> None:
        try:
            await store.save(job)
        except ValueError as exc:
            answers.append((job.id, exc))
        else:
            answers.append((job.id, None))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(save, job)

    failed = sorted(job_id for job_id, exc in answers if exc is not None)
    assert failed == ["old", "twice"]
    assert all("exists already" in str(exc) for _, exc in answers if exc is not None)
    for job in jobs[:30]:
        assert await store.get(job.id) == job
    assert (await store.get_stats()).pending == 32


async def test_two_settles_of_one_attempt_in_one_batch_apply_once(make_store: MakeStore) -> None:
    store = await make_store()
    await store.save(Job(id="j", type="t"))
    [job] = await store.claim("w", 1)
    answers: list[bool] = []

    async def settle(status: JobStatus) -> None:
        answers.append(await store.settle("j", worker_id="w", attempt=job.attempts, status=status))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(settle, JobStatus.COMPLETED)
        nursery.start_soon(settle, JobStatus.FAILED)
    assert sorted(answers) == [False, True]


async def test_cancelled_settles_leave_the_others_to_be_written(make_store: MakeStore) -> None:
    store = await make_store()
    await save_jobs(store, 20)
    jobs = await store.claim("w", 20)
    doomed, kept = jobs[:5], jobs[5:]
    answers: dict[str, bool] = {}
    scopes: list[trio.CancelScope] = []

    async def settle(job: Job[Any]) -> None:
        answers[job.id] = await store.settle(
            job.id, worker_id="w", attempt=job.attempts, status=JobStatus.COMPLETED
        )

    async def settle_or_give_up(job: Job[Any]) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await settle(job)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for job in kept:
                nursery.start_soon(settle, job)
            # The kept settles are being written; the doomed ones wait in line.
            await trio.testing.wait_all_tasks_blocked()
            for job in doomed:
                nursery.start_soon(settle_or_give_up, job)
            await trio.testing.wait_all_tasks_blocked()
            for scope in scopes:
                scope.cancel()
    assert sorted(answers) == sorted(job.id for job in kept)
    assert all(answers.values())
    for job in jobs:
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.status is (JobStatus.RUNNING if job in doomed else JobStatus.COMPLETED)


# -- requests cancelled after another task's batch took them ----------------------


class NotedBatches:
    """Notes each settle-and-claim batch and the task writing it; can hold it in its thread.

    While ``hold`` is set, a batch's thread waits (at most ``DEADLINE``) before
    writing, after setting ``entered``: the batch is in flight, its statement
    not yet sent.
    """

    def __init__(self, store: PostgresStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[tuple[trio.lowlevel.Task, list[Any]]] = []
        self.entered = trio.Event()
        self.hold = False
        self.release = threading.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._make_writer = store._cycle._make_writer
        monkeypatch.setattr(store._cycle, "_make_writer", self._writer)

    def _writer(self, batch: list[Any]) -> Callable[[Any], list[Any]]:
        self.batches.append((trio.lowlevel.current_task(), batch))
        write = self._make_writer(batch)
        hold = self.hold

        def held(conn: Any) -> list[Any]:
            if hold:
                self._token.run_sync_soon(self.entered.set)
                self.release.wait(DEADLINE)
            return write(conn)

        return held


async def test_a_claim_cancelled_while_another_task_writes_it_gives_its_jobs_back(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two claims go in one batch, written by the task that queued first. The other
    # is cancelled while that batch is in flight: its statement runs anyway, and
    # the job it claims must go back to PENDING, its attempt uncounted, not stay
    # RUNNING for a worker that will never run it (until its lease expires).
    store = await make_store()
    ids = await save_jobs(store, 2)
    noted = NotedBatches(store, monkeypatch)
    noted.hold = True
    scopes: dict[trio.lowlevel.Task, trio.CancelScope] = {}
    workers: dict[trio.lowlevel.Task, str] = {}
    claimed: dict[str, list[Job[Any]]] = {}

    async def claim(worker_id: str) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            workers[trio.lowlevel.current_task()] = worker_id
            claimed[worker_id] = await store.claim(worker_id, 1)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, "a")
            nursery.start_soon(claim, "b")
            await noted.entered.wait()
            [(flusher, batch)] = noted.batches
            assert len(batch) == 2  # the flusher's claim carries the other's
            noted.hold = False
            [carried] = [task for task in scopes if task is not flusher]
            scopes[carried].cancel()
            await trio.testing.wait_all_tasks_blocked()
            noted.release.set()
    assert scopes[carried].cancelled_caught
    assert not scopes[flusher].cancelled_caught
    [kept] = claimed[workers[flusher]]
    assert (kept.status, kept.attempts) == (JobStatus.RUNNING, 1)
    assert not (await store.heartbeat(workers[flusher], [kept.id])).lost
    [given_back] = set(ids) - {kept.id}
    stored = await store.get(given_back)
    assert stored is not None
    assert (stored.status, stored.attempts) == (JobStatus.PENDING, 0)
    assert [job.id for job in await store.claim("c", 5)] == [given_back]


@pytest.mark.parametrize("kind", ["claim", "settle"])
async def test_requests_of_a_batch_cancelled_before_it_was_sent_are_never_written(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Two requests go in one batch, which waits for a connection (all busy). The
    # task it carries is cancelled, then the one writing it: nothing was sent, and
    # neither request may linger in the queue for the next batch to write behind
    # its caller's back (a claim taking jobs nobody runs, a settle nobody awaits).
    store = await make_store(max_connections=1)
    ids = await save_jobs(store, 2)
    running = await store.claim("w", 2) if kind == "settle" else []
    noted = NotedBatches(store, monkeypatch)
    scopes: dict[trio.lowlevel.Task, trio.CancelScope] = {}

    async def request(n: int) -> None:
        with trio.CancelScope() as scope:
            scopes[trio.lowlevel.current_task()] = scope
            if kind == "claim":
                await store.claim(f"w{n}", 1)
            else:
                await store.settle(
                    running[n].id, worker_id="w", attempt=1, status=JobStatus.COMPLETED
                )

    busy = object()
    await store._limiter.acquire_on_behalf_of(busy)
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(request, 0)
                nursery.start_soon(request, 1)
                await trio.testing.wait_all_tasks_blocked()
                [(flusher, batch)] = noted.batches
                assert len(batch) == 2
                assert store._limiter.statistics().tasks_waiting == 1
                [carried] = [task for task in scopes if task is not flusher]
                scopes[carried].cancel()
                await trio.testing.wait_all_tasks_blocked()
                scopes[flusher].cancel()
    finally:
        store._limiter.release_on_behalf_of(busy)
    assert all(scope.cancelled_caught for scope in scopes.values())
    claimed = await store.claim("next", 5)  # the next batch: its own request alone
    if kind == "claim":
        assert sorted(job.id for job in claimed) == ids
    else:
        assert claimed == []
        for job in running:
            stored = await store.get(job.id)
            assert stored is not None
            assert (stored.status, stored.attempts) == (JobStatus.RUNNING, 1)
        assert not (await store.heartbeat("w", [job.id for job in running])).lost


@pytest.mark.parametrize("plan", ["custom", "generic"])
async def test_a_settle_reads_its_own_rows_not_every_running_one(
    make_store: MakeStore, pg_schema: str, plan: str
) -> None:
    # The fence finds a batch's rows by primary key. It once joined the batch to
    # every running row, so each settle read the jobs all other workers held.
    store = await make_store()
    held_elsewhere = 2000
    await admin_async(
        f'INSERT INTO "{pg_schema}".jobs (id, type, payload, status, priority, max_attempts,'
        " created_at, ready_at) SELECT 'j' || i, 't', 'null', 'pending', 0, 1, now(), now()"
        f" FROM generate_series(1, {held_elsewhere + 10}) AS i"
    )
    assert len(await store.claim("others", held_elsewhere)) == held_elsewhere
    mine = await store.claim("w", 10)
    await admin_async(f'ANALYZE "{pg_schema}".jobs')
    settles = [
        SettleRequest(job.id, "w", job.attempts, "completed", None, None, 0.0, 0.001)
        for job in mine
    ]
    params = {
        "batch": json.dumps([_settle_record(request) for request in settles]),
        "ids": [job.id for job in mine],
        "token": "t",
    }

    def settle_and_count_rows_read() -> tuple[int, int]:
        with psycopg.connect(PG_DSN) as conn:  # one transaction, rolled back
            conn.execute(f"SET plan_cache_mode = force_{plan}_plan")
            applied = len(conn.execute(store._sql.settle, params, prepare=True).fetchall())
            [(read,)] = conn.execute(
                "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
                " WHERE relid = %s::regclass",
                (f'"{pg_schema}".jobs',),
            ).fetchall()
            conn.rollback()
            return applied, read

    applied, read = await trio.to_thread.run_sync(settle_and_count_rows_read)
    assert applied == 10
    assert read <= 4 * len(mine), read


async def test_heartbeats_and_settles_of_the_same_jobs_never_deadlock(
    make_store: MakeStore,
) -> None:
    # Both lock many rows and wait for them; in different orders they deadlock.
    settler, beater = await make_store(), await make_store()
    errors: list[Exception] = []
    for round_ in range(3):
        ids = await save_jobs(settler, 150, job_type=f"r{round_}")
        jobs = await settler.claim("w", 150)
        jobs.sort(key=lambda job: hash(job.id))

        async def beat(ids: list[str] = ids) -> None:
            for _ in range(10):
                try:
                    await beater.heartbeat("w", list(reversed(ids)))
                except Exception as exc:
                    errors.append(exc)

        async def settle(job: Job[Any]) -> None:
            try:
                await settler.settle(
                    job.id, worker_id="w", attempt=job.attempts, status=JobStatus.COMPLETED
                )
            except Exception as exc:
                errors.append(exc)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(beat)
                for job in jobs:
                    nursery.start_soon(settle, job)
    assert errors == []
    assert (await settler.get_stats()).completed == 450


async def test_rescue_from_many_stores_at_once_rescues_each_job_once(
    make_store: MakeStore,
) -> None:
    stores = [await make_store(lease_duration=0.2) for _ in range(4)]
    for n in range(30):
        await stores[0].save(Job(id=f"j{n}", type="t", max_attempts=1 + n % 2))
    assert len(await stores[0].claim("doomed-worker", 30)) == 30
    rescued: list[Job[Any]] = []

    async def rescuer(store: PostgresStorage) -> None:
        while len(rescued) < 30:
            rescued.extend(await store.rescue_expired())
            await trio.sleep(0.01)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(rescuer, store)

    assert sorted(job.id for job in rescued) == sorted(f"j{n}" for n in range(30))
    for job in rescued:
        assert job.attempts == 1
        assert job.last_error is not None
        assert job.last_error.type == "WorkerLostError"
        assert "doomed-worker" in job.last_error.message
        assert "attempt 1" in job.last_error.message
        expected = JobStatus.FAILED if job.max_attempts == 1 else JobStatus.PENDING
        assert job.status is expected


async def test_json_columns_round_trip_exactly(make_store: MakeStore) -> None:
    # jsonb would turn 1e16 into an int, reorder keys and refuse NUL characters.
    store = await make_store()
    payload = {"z": 1e16, "a": [1.0, 2.5, -0.0], "nul": "a\u0000b", "nested": {"b": 1, "a": 2}}
    await store.save(Job(id="j", type="t", payload=payload, metadata={"k": 1e300}))
    job = await store.get("j")
    assert job is not None
    assert job.payload == payload
    assert type(job.payload["z"]) is float
    assert list(job.payload["nested"]) == ["b", "a"]
    assert job.metadata == {"k": 1e300}
    await store.claim("w", 1)
    assert await store.settle(
        "j", worker_id="w", attempt=1, status=JobStatus.COMPLETED, result=payload
    )
    done = await store.get("j")
    assert done is not None
    assert done.result == payload
    assert type(done.result["z"]) is float


# -- LISTEN / NOTIFY --------------------------------------------------------------


async def test_a_save_in_another_store_wakes_wait_for_work(make_store: MakeStore) -> None:
    waiter, producer = await make_store(), await make_store()
    await waiter.wait_for_work(0)  # forget anything seen before
    woke = trio.Event()

    async def wait() -> None:
        await waiter.wait_for_work(WAKE_TIMEOUT)
        woke.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await producer.save(Job(id="j", type="t"))
    assert [job.id for job in await waiter.claim("w", 1)] == ["j"]


async def test_a_delay_announced_by_another_store_wakes_wait_for_work_when_due(
    make_store: MakeStore,
) -> None:
    waiter, producer = await make_store(), await make_store()
    await producer.save(Job(id="later", type="t"), delay=0.3)
    with trio.fail_after(DEADLINE):
        while not await waiter.claim("w", 1):
            await waiter.wait_for_work(WAKE_TIMEOUT)


# -- claiming in the LISTEN thread --------------------------------------------------------


async def wait_and_claim_while_saving(
    worker: PostgresStorage, producer: PostgresStorage, job: Job[Any]
) -> list[Job[Any]] | None:
    """What ``worker.wait_and_claim`` returns when ``producer`` saves ``job`` meanwhile."""
    claimed: list[list[Job[Any]] | None] = []

    async def wait() -> None:
        claimed.append(await worker.wait_and_claim("w", 5, ["t"], WAKE_TIMEOUT))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await producer.save(job)
    [answer] = claimed
    return answer


async def test_wait_and_claim_claims_a_job_saved_elsewhere_as_it_is_announced(
    make_store: MakeStore,
) -> None:
    worker, producer = await make_store(), await make_store()
    jobs = await wait_and_claim_while_saving(worker, producer, Job(id="j", type="t"))
    assert jobs is not None
    assert [(job.id, job.status, job.attempts) for job in jobs] == [("j", JobStatus.RUNNING, 1)]
    # The claim is the worker's: its lease renews, and its settle applies.
    assert (await worker.heartbeat("w", ["j"])).lost == frozenset()
    assert await worker.settle("j", worker_id="w", attempt=1, status=JobStatus.COMPLETED)


async def test_wait_and_claim_leaves_other_types_and_delayed_jobs_to_the_caller(
    make_store: MakeStore,
) -> None:
    worker, producer = await make_store(), await make_store()
    # Announced work of a type it does not handle: nothing claimed.
    assert await wait_and_claim_while_saving(worker, producer, Job(id="other", type="other")) == []
    with trio.fail_after(DEADLINE):
        # Announced for later: the waiter wakes when it is due, and claims itself.
        await producer.save(Job(id="later", type="t"), delay=0.3)
        assert await worker.wait_and_claim("w", 5, ["t"], WAKE_TIMEOUT) is None
        assert [job.id for job in await worker.claim("w", 5, ["t"])] == ["later"]
    # Woken by nothing at all: the timeout.
    assert await worker.wait_and_claim("w", 5, ["t"], 0.05) is None
    other = await producer.get("other")
    assert other is not None
    assert other.status is JobStatus.PENDING


async def test_wait_and_claim_finds_its_jobs_when_the_claims_answer_is_lost(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The LISTEN connection dies after the claim committed, before its answer came:
    # the jobs are the worker's, and it must learn which they are.
    worker, producer = await make_store(), await make_store()
    claim_now: Callable[..., list[Job[Any]]] = worker._writers.claim_now

    def claim_then_lose_the_answer(request: Any, conn: Any) -> list[Job[Any]]:
        claim_now(request, conn)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(worker._writers, "claim_now", claim_then_lose_the_answer)
    jobs = await wait_and_claim_while_saving(worker, producer, Job(id="j", type="t"))
    assert jobs is not None
    assert [(job.id, job.status, job.attempts) for job in jobs] == [("j", JobStatus.RUNNING, 1)]
    assert await worker.settle("j", worker_id="w", attempt=1, status=JobStatus.COMPLETED)
    assert any("claiming on a work notification failed" in r.getMessage() for r in caplog.records)


async def test_wait_and_claim_cancelled_mid_claim_gives_the_jobs_back_uncounted(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, producer = await make_store(), await make_store()
    entered, release = threading.Event(), threading.Event()
    claim_now: Callable[..., list[Job[Any]]] = worker._writers.claim_now

    def slow_claim(request: Any, conn: Any) -> list[Job[Any]]:
        entered.set()
        release.wait(DEADLINE)
        return claim_now(request, conn)

    monkeypatch.setattr(worker._writers, "claim_now", slow_claim)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(worker.wait_and_claim, "w", 5, ["t"], WAKE_TIMEOUT)
                await trio.testing.wait_all_tasks_blocked()
                await producer.save(Job(id="j", type="t"))
                await trio.to_thread.run_sync(entered.wait)
                nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
            release.set()
    job = await producer.get("j")
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.PENDING, 0)
    assert [j.id for j in await producer.claim("w2", 5)] == ["j"]


async def test_a_retry_in_another_store_wakes_wait_for_work(make_store: MakeStore) -> None:
    waiter, worker = await make_store(), await make_store()
    await worker.save(Job(id="j", type="t"))
    await worker.claim("w", 1)
    await waiter.wait_for_work(0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.wait_for_work, WAKE_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            await worker.settle("j", worker_id="w", attempt=1, status=JobStatus.RETRYING)


async def test_a_cancel_request_from_another_store_wakes_the_worker(
    make_store: MakeStore,
) -> None:
    worker, client = await make_store(), await make_store()
    await client.save(Job(id="j", type="t"))
    [job] = await worker.claim("w", 1)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.wait_for_cancel_request, WAKE_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            assert await client.request_cancel("j") is CancelOutcome.REQUESTED
    beat = await worker.heartbeat("w", [job.id])
    assert beat.cancel_requested == {"j"}


async def test_cancelling_a_waiting_job_does_not_signal_workers(make_store: MakeStore) -> None:
    worker, client = await make_store(), await make_store()
    await client.save(Job(id="j", type="t"))
    assert await client.request_cancel("j") is CancelOutcome.CANCELLED
    with trio.move_on_after(0.5) as scope:
        await worker.wait_for_cancel_request(WAKE_TIMEOUT)
    assert scope.cancelled_caught


@pytest.mark.parametrize("job_id", ["plain", "with\nnewline", "long" * 100])
async def test_a_settle_in_another_store_wakes_wait_for_change(
    make_store: MakeStore, job_id: str
) -> None:
    watcher, worker = await make_store(), await make_store()
    await worker.save(Job(id=job_id, type="t"))
    await worker.claim("w", 1)
    seen: list[JobStatus] = []

    async def watch() -> None:
        # As a handle does: look, then wait for a change (which may wake early).
        while not seen or not seen[-1].is_final:
            job = await watcher.get(job_id)
            assert job is not None
            seen.append(job.status)
            if not job.status.is_final:
                await watcher.wait_for_change(job_id, WAKE_TIMEOUT)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            # The first wait returns once the watcher hears changes; then it waits again.
            while len(seen) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            await worker.settle(job_id, worker_id="w", attempt=1, status=JobStatus.COMPLETED)
    assert seen[-1] is JobStatus.COMPLETED
    assert set(seen[:-1]) == {JobStatus.RUNNING}


async def test_a_store_hears_changed_jobs_only_once_it_waits_for_one(
    make_store: MakeStore,
) -> None:
    # Every settle is announced; a worker that never waits for a job (most) is
    # not sent the announcements at all.
    store = await make_store()
    await store.save(Job(id="j", type="t"))
    with trio.fail_after(DEADLINE):
        await trio.sleep(0.3)  # several turns of the LISTEN thread
        assert not store._wakeups._hearing_changes
        await store.wait_for_change("j", WAKE_TIMEOUT)  # returns once it hears them
        assert store._wakeups._hearing_changes


async def test_the_listener_reconnects_after_its_backend_is_terminated(
    make_store: MakeStore, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_jobs.postgres")
    waiter, producer = await make_store(), await make_store()
    listeners = await backend_pids(f"trio_jobs:{pg_schema}:listen")
    assert len(listeners) == 2
    await waiter.wait_for_work(0)
    await terminate(listeners)
    with trio.fail_after(DEADLINE):
        # Reconnecting wakes every waiter: notifications may have been missed.
        await waiter.wait_for_work(WAKE_TIMEOUT)
        # The new connection listens: a save elsewhere wakes the waiter again.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.wait_for_work, WAKE_TIMEOUT)
            await trio.testing.wait_all_tasks_blocked()
            await producer.save(Job(id="after", type="t"))
    assert (await backend_pids(f"trio_jobs:{pg_schema}:listen")).isdisjoint(listeners)
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_jobs.postgres"]
    assert any("LISTEN connection to PostgreSQL lost" in m for m in messages)
    assert any("re-established" in m for m in messages)


async def test_queries_succeed_after_the_pool_connections_are_terminated(
    make_store: MakeStore, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await make_store(min_connections=3, max_connections=3)
    await store.save(Job(id="j", type="t"))

    async def read_concurrently() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(store.get, "j")

    # Make sure all three pooled connections exist, then kill them while idle.
    await read_concurrently()
    pool_pids = await backend_pids(f"trio_jobs:{pg_schema}")
    assert len(pool_pids) == 3
    await terminate(pool_pids)
    with trio.fail_after(30):
        job = await store.get("j")
        assert job is not None
        [claimed] = await store.claim("w", 1)
        assert await store.settle(
            "j", worker_id="w", attempt=claimed.attempts, status=JobStatus.COMPLETED
        )
        await read_concurrently()
    assert (await backend_pids(f"trio_jobs:{pg_schema}")).isdisjoint(pool_pids)
    assert any("connection lost" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("operation", ["claim", "settle", "settle and claim"])
async def test_a_write_whose_connection_dies_under_it_is_retried_and_applied_once(
    make_store: MakeStore, pg_schema: str, operation: str
) -> None:
    store = await make_store(min_connections=1, max_connections=2)
    await store.save(Job(id="j", type="t"))
    claimed: list[Job[Any]] = [] if operation == "claim" else await store.claim("w", 1)
    if operation == "settle and claim":
        await store.save(Job(id="k", type="t"))
    answers: list[Any] = []

    async def write() -> None:
        async with trio.open_nursery() as nursery:
            if operation != "settle":
                nursery.start_soon(claim)
            if operation != "claim":
                nursery.start_soon(settle)

    async def claim() -> None:
        answers.append([job.id for job in await store.claim("w", 5)])

    async def settle() -> None:
        answers.append(
            await store.settle("j", worker_id="w", attempt=1, status=JobStatus.COMPLETED)
        )

    def blocked_writer() -> set[int]:
        rows = admin(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (f"trio_jobs:{pg_schema}",),
        )
        return {row[0] for row in rows}

    with psycopg.connect(PG_DSN) as locker, trio.fail_after(30):
        # Hold the table so the store's statement waits; then kill its session.
        locker.execute(f'LOCK TABLE "{pg_schema}".jobs IN SHARE ROW EXCLUSIVE MODE')
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            while not (pids := await trio.to_thread.run_sync(blocked_writer)):  # noqa: ASYNC110
                await trio.sleep(0.01)
            await terminate(pids)
            # The retry waits for the lock too; release it.
            while not await trio.to_thread.run_sync(blocked_writer):  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.to_thread.run_sync(locker.commit)

    job = await store.get("j")
    assert job is not None
    if operation == "claim":
        assert answers == [["j"]]
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)
    elif operation == "settle":
        assert claimed
        assert answers == [True]
        assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)
    else:
        # Both went in one transaction; the retry applied each exactly once.
        assert sorted(answers, key=str) == [True, ["k"]]
        assert (job.status, job.attempts) == (JobStatus.COMPLETED, 1)
        other = await store.get("k")
        assert other is not None
        assert (other.status, other.attempts) == (JobStatus.RUNNING, 1)


async def test_close_leaves_no_listener_thread_behind(make_store: MakeStore) -> None:
    store = await make_store()

    def listener_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "trio_jobs postgres LISTEN"]

    with trio.fail_after(DEADLINE):
        while not listener_threads():  # noqa: ASYNC110 (a thread's name is not an event)
            await trio.sleep(0.01)
    await store.close()
    assert listener_threads() == []
    await store.close()  # idempotent


async def test_close_completes_even_when_cancelled(make_store: MakeStore) -> None:
    store = await make_store()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("x")


# -- read-only opening (issue 17) --------------------------------------------------------------


async def test_read_only_refuses_a_missing_schema_and_creates_nothing(
    make_store: MakeStore, pg_schema: str
) -> None:
    with pytest.raises(StorageCorruptError, match=f"no trio_jobs schema named '{pg_schema}' here"):
        await make_store(read_only=True)
    assert (
        await admin_async("SELECT nspname FROM pg_namespace WHERE nspname = %s", (pg_schema,)) == []
    )


async def test_read_only_reads_a_migrated_schema_without_migrating_it(
    make_store: MakeStore, pg_schema: str
) -> None:
    writer = await make_store()
    await writer.save(Job(id="a" * 32, type="mail"))
    versions = await admin_async(f'SELECT count(*) FROM "{pg_schema}".schema_version')

    reader = await make_store(read_only=True)

    assert reader.read_only
    assert [job.id for job in await reader.list_jobs()] == ["a" * 32]
    assert await reader.waiting_by_type() == {"mail": 1}
    assert await admin_async(f'SELECT count(*) FROM "{pg_schema}".schema_version') == versions


async def test_read_only_refuses_a_schema_not_migrated_to_this_version(
    make_store: MakeStore, pg_schema: str
) -> None:
    await make_store()
    await admin_async(
        f'DELETE FROM "{pg_schema}".schema_version WHERE version = %s', (_sql.LATEST_VERSION,)
    )

    with pytest.raises(StorageCorruptError, match="older than this trio_jobs reads"):
        await make_store(read_only=True)
