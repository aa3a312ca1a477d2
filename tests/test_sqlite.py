"""SQLiteStorage specifics: the file, the schema, concurrency and group commit.

The behaviour every store shares is in test_storage_contract.py. These tests use
real files and real threads; time is real, bounded by generous deadlines.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import (
    Job,
    JobRunner,
    JobStatus,
    SQLiteStorage,
    StorageCorruptError,
    StorageUnavailableError,
)
from trio_jobs.storage.sqlite import _connect, _store

DEADLINE = 10.0


def new_job(job_type: str = "work", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


@pytest.fixture
async def store(sqlite_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(sqlite_path) as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection to the file, as another program would open it."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def traced(store: SQLiteStorage) -> list[str]:
    """Record the SQL the store's connection runs from now on."""
    statements: list[str] = []
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(statements.append)
    return statements


# -- arguments and lifecycle -------------------------------------------------------------


@pytest.mark.parametrize("lease", [0, -1.0, math.nan, math.inf])
def test_lease_duration_must_be_positive_and_finite(lease: float) -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        SQLiteStorage("jobs.db", lease_duration=lease)


@pytest.mark.parametrize("lease", ["30", None, True])
def test_lease_duration_must_be_a_number(lease: Any) -> None:
    with pytest.raises(TypeError, match="lease_duration"):
        SQLiteStorage("jobs.db", lease_duration=lease)


@pytest.mark.parametrize("path", [123, b"jobs.db", None])
def test_path_must_be_a_string_or_pathlike(path: Any) -> None:
    with pytest.raises(TypeError, match="path"):
        SQLiteStorage(path)


async def test_accepts_str_and_pathlike(sqlite_path: Path) -> None:
    async with SQLiteStorage(str(sqlite_path), lease_duration=5) as store:
        assert store.lease_duration == 5.0
        assert store.path == str(sqlite_path)
    async with SQLiteStorage(sqlite_path):
        pass


async def test_open_and_close_are_idempotent_and_the_store_can_reopen(sqlite_path: Path) -> None:
    store = SQLiteStorage(sqlite_path)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get("x")
    await store.open()
    await store.open()
    job = new_job()
    await store.save(job)
    await store.close()
    await store.close()
    with pytest.raises(trio.ClosedResourceError):
        await store.get(job.id)
    with pytest.raises(trio.ClosedResourceError):
        await store.save(new_job())
    await store.open()
    assert await store.get(job.id) is not None
    await store.close()


async def test_an_in_memory_database_works() -> None:
    async with SQLiteStorage(":memory:") as store:
        job = new_job()
        await store.save(job)
        assert [j.id for j in await store.claim("w1", 10)] == [job.id]


async def test_settle_rejects_running_and_negative_delays(store: SQLiteStorage) -> None:
    await store.save(new_job())
    (job,) = await store.claim("w1", 1)

    with pytest.raises(ValueError, match="running"):
        await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.RUNNING)
    with pytest.raises(ValueError, match="delay"):
        await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.RETRYING, delay=-1)
    with pytest.raises(ValueError, match="delay"):
        await store.save(new_job(), delay=math.nan)
    assert (await store.get(job.id)).status is JobStatus.RUNNING


# -- the file ----------------------------------------------------------------------------


async def test_the_file_is_in_wal_mode_with_normal_sync_and_a_busy_timeout(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    other = raw(sqlite_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


async def test_data_survives_close_and_reopen(sqlite_path: Path) -> None:
    job = new_job(payload={"a": [1, 2]}, metadata={"m": "x"}, tenant_id="t")
    async with SQLiteStorage(sqlite_path) as store:
        await store.save(job)
        await store.save(new_job(), delay=3600)
        (claimed,) = await store.claim("w1", 1)
        await store.settle(
            claimed.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED, result={"r": 1}
        )
        before = await store.list_jobs()

    async with SQLiteStorage(sqlite_path) as store:
        assert await store.list_jobs() == before
        assert (await store.get(job.id)).result == {"r": 1}
        assert await store.claim("w1", 10) == []  # the other one is still delayed


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "jobs.db"

    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        await SQLiteStorage(path).open()

    assert str(path) in str(info.value)


async def test_a_directory_instead_of_a_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=str(tmp_path)):
        await SQLiteStorage(tmp_path).open()


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, just some text " * 100)

    with pytest.raises(ValueError, match="not a trio_jobs SQLite database") as info:
        await SQLiteStorage(path).open()

    assert str(path) in str(info.value)


async def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteStorage(path) as store:
        for _ in range(50):
            await store.save(new_job(payload="x" * 500))
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header's tail and the schema page
    path.write_bytes(bytes(data))

    # A StorageCorruptError, still a ValueError as before.
    with pytest.raises(ValueError, match=r"is corrupt|not a trio_jobs SQLite database") as info:
        await SQLiteStorage(path).open()
    assert isinstance(info.value, StorageCorruptError)


async def test_another_programs_jobs_table_is_not_touched(sqlite_path: Path) -> None:
    conn = raw(sqlite_path)
    conn.execute("CREATE TABLE jobs (name TEXT)")
    conn.execute("INSERT INTO jobs VALUES ('theirs')")
    conn.close()

    with pytest.raises(ValueError, match="not a trio_jobs SQLite database"):
        await SQLiteStorage(sqlite_path).open()

    conn = raw(sqlite_path)
    assert conn.execute("SELECT name FROM jobs").fetchall() == [("theirs",)]
    conn.close()


async def test_a_lock_held_past_the_busy_timeout_is_a_clear_error(
    store: SQLiteStorage, sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_connect, "BUSY_TIMEOUT", 0.1)
    impatient = SQLiteStorage(sqlite_path)
    await impatient.open()
    other = raw(sqlite_path)
    other.execute("BEGIN IMMEDIATE")
    try:
        with trio.fail_after(DEADLINE), pytest.raises(TimeoutError, match="locked") as info:
            await impatient.save(new_job())
        assert str(sqlite_path) in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
        await impatient.close()
    assert await store.count_unfinished() == 0


async def test_a_briefly_held_lock_is_waited_out(store: SQLiteStorage, sqlite_path: Path) -> None:
    other = raw(sqlite_path)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        with trio.fail_after(DEADLINE):
            await store.save(new_job())
    finally:
        release.join()
        other.close()
    assert await store.count_unfinished() == 1


# -- schema and migrations ---------------------------------------------------------------


async def test_the_schema_is_versioned_and_migrating_again_changes_nothing(
    sqlite_path: Path,
) -> None:
    async with SQLiteStorage(sqlite_path) as store:
        await store.save(new_job())
    conn = raw(sqlite_path)
    schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()

    async with SQLiteStorage(sqlite_path) as store:
        assert await store.count_unfinished() == 1

    conn = raw(sqlite_path)
    try:
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(v,) for v in range(1, _store.SCHEMA_VERSION + 1)]
    finally:
        conn.close()


async def test_a_version_5_file_loses_the_index_retention_makes_redundant(
    sqlite_path: Path,
) -> None:
    # Migration 6: jobs_retention (status, completed_at) serves every query that
    # jobs_completed did; a file made at version 5 drops it on its next opening.
    async with SQLiteStorage(sqlite_path):
        pass
    conn = raw(sqlite_path)
    with conn:
        conn.execute("DELETE FROM schema_version WHERE version = 6")
        conn.execute(
            "CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL"
        )
    conn.close()

    async with SQLiteStorage(sqlite_path):
        pass

    conn = raw(sqlite_path)
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "jobs_retention" in names
        assert "jobs_completed" not in names
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (6,)
    finally:
        conn.close()


async def test_an_unversioned_empty_schema_table_is_migrated(sqlite_path: Path) -> None:
    conn = raw(sqlite_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    conn.close()

    async with SQLiteStorage(sqlite_path) as store:
        await store.save(new_job())
        assert await store.count_unfinished() == 1


async def test_a_newer_schema_is_refused(sqlite_path: Path) -> None:
    async with SQLiteStorage(sqlite_path):
        pass
    conn = raw(sqlite_path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (_store.SCHEMA_VERSION + 1,))
    conn.close()

    with pytest.raises(ValueError, match="newer"):
        await SQLiteStorage(sqlite_path).open()


async def test_concurrent_first_opens_migrate_once(sqlite_path: Path) -> None:
    stores = [SQLiteStorage(sqlite_path) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for s in stores:
            nursery.start_soon(s.open)
    for s in stores:
        await s.close()
    conn = raw(sqlite_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (
            _store.SCHEMA_VERSION,
        )
    finally:
        conn.close()


# -- queries use the indexes -------------------------------------------------------------


@pytest.mark.parametrize("job_types", [None, ["a", "b"]])
async def test_the_claim_walks_the_claim_order_index_without_sorting(
    store: SQLiteStorage, sqlite_path: Path, job_types: list[str] | None
) -> None:
    for i in range(20):
        await store.save(new_job("a", priority=i % 4))
    statements = traced(store)

    claimed = await store.claim("w1", 5, job_types)

    assert len(claimed) == 5
    (claim_sql,) = [s for s in statements if s.lstrip().startswith("UPDATE jobs")]
    conn = raw(sqlite_path)
    try:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {claim_sql}"))
    finally:
        conn.close()
    assert "USING INDEX jobs_ready" in plan
    assert "TEMP B-TREE" not in plan


async def test_rescue_and_unfinished_counts_use_indexes(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.save(new_job())
    statements = traced(store)
    await store.rescue_expired()
    await store.count_unfinished(["work"])
    conn = raw(sqlite_path)
    try:
        plans = [
            " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for sql in statements
            if sql.lstrip().startswith("SELECT")
        ]
    finally:
        conn.close()
    assert len(plans) == 2
    assert "jobs_leases" in plans[0]
    assert "COVERING INDEX jobs_status" in plans[1]


# -- several connections -----------------------------------------------------------------


async def test_two_stores_in_two_threads_never_claim_the_same_job(sqlite_path: Path) -> None:
    ids = [f"job-{i:03d}" for i in range(300)]
    async with SQLiteStorage(sqlite_path) as store:
        for job_id in ids:
            await store.save(Job(id=job_id, type="work"))

    taken: dict[str, list[str]] = {}

    async def drain(worker: str) -> None:
        mine: list[str] = []
        async with SQLiteStorage(sqlite_path) as s:
            while jobs := await s.claim(worker, 5):
                for job in jobs:
                    assert await s.settle(
                        job.id, worker_id=worker, attempt=1, status=JobStatus.COMPLETED
                    )
                mine += [job.id for job in jobs]
        taken[worker] = mine

    def other_loop() -> None:
        trio.run(drain, "thread-worker")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, other_loop)
            nursery.start_soon(drain, "loop-worker")

    both = taken["thread-worker"] + taken["loop-worker"]
    assert sorted(both) == ids
    async with SQLiteStorage(sqlite_path) as store:
        stats = await store.get_stats()
    assert stats.completed == 300
    assert stats.running == stats.pending == 0


async def test_wait_for_work_notices_a_commit_from_another_connection(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.wait_for_work(0)  # forget earlier wake-ups
    assert await store.claim("w1", 10) == []  # as a worker does before it waits
    async with SQLiteStorage(sqlite_path) as producer:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.wait_for_work, 3600)
                await trio.testing.wait_all_tasks_blocked()
                await producer.save(new_job())
    assert len(await store.claim("w1", 10)) == 1


async def test_wait_for_work_notices_a_commit_made_before_it_began(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    # A producer's commit between a worker's empty claim and its wait is work too.
    await store.wait_for_work(0)
    assert await store.claim("w1", 10) == []
    async with SQLiteStorage(sqlite_path) as producer:
        await producer.save(new_job())
    with trio.fail_after(DEADLINE):
        await store.wait_for_work(3600)
    assert len(await store.claim("w1", 10)) == 1


# -- group commit ------------------------------------------------------------------------


async def test_concurrent_settles_share_a_transaction_and_each_gets_its_answer(
    store: SQLiteStorage,
) -> None:
    for _ in range(100):
        await store.save(new_job())
    jobs = await store.claim("w1", 100)
    statements = traced(store)
    answers: dict[str, bool] = {}

    async def settle(i: int, job: Job[Any]) -> None:
        # Every third caller has lost its claim (wrong attempt): only it is refused.
        attempt = 2 if i % 3 == 0 else 1
        status = JobStatus.COMPLETED if i % 2 else JobStatus.FAILED
        answers[job.id] = await store.settle(
            job.id, worker_id="w1", attempt=attempt, status=status, result=i
        )

    async with trio.open_nursery() as nursery:
        for i, job in enumerate(jobs):
            nursery.start_soon(settle, i, job)

    commits = statements.count("COMMIT")
    assert 1 <= commits < 10
    for i, job in enumerate(jobs):
        got = await store.get(job.id)
        if i % 3 == 0:
            assert answers[job.id] is False
            assert got.status is JobStatus.RUNNING
        else:
            assert answers[job.id] is True
            assert got.status is (JobStatus.COMPLETED if i % 2 else JobStatus.FAILED)
            assert got.result == (i if i % 2 else None)


async def test_a_drain_writes_one_transaction_per_round_of_attempts(
    sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round of attempts ends in one turn of Trio's scheduler, and the claim that
    # fills their slots comes in the next: both go in one transaction. Trio
    # shuffles each turn fully once Hypothesis is imported (as in this suite), and
    # otherwise only reverses it at random: test the order programs run in.
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", False)

    async def noop(payload: Any, ctx: Any) -> None:
        return None

    runner = JobRunner(storage=SQLiteStorage(sqlite_path), concurrency=10)
    runner.register_handler("noop", noop)
    with trio.fail_after(60):
        async with runner:
            await runner.join()
            statements = traced(runner.storage)  # type: ignore[arg-type]
            await runner.submit_many("noop", list(range(200)))
            await runner.join()
            assert (await runner.stats()).completed == 200

    transactions = sum(s.strip().upper().startswith("BEGIN IMMEDIATE") for s in statements)
    # The batch, then 20 rounds of (10 settles + the next claim); a little room for
    # the worker row's heartbeat. (With the claim racing the settles: 27 to 34.)
    assert transactions <= 25


async def test_a_duplicate_in_a_batch_of_saves_fails_alone(store: SQLiteStorage) -> None:
    existing = new_job()
    await store.save(existing)
    fresh = [new_job() for _ in range(20)]
    errors: list[BaseException] = []

    async def save(job: Job[Any]) -> None:
        try:
            await store.save(job)
        except ValueError as exc:
            errors.append(exc)

    statements = traced(store)
    async with trio.open_nursery() as nursery:
        for job in [*fresh[:10], existing, *fresh[10:]]:
            nursery.start_soon(save, job)

    assert statements.count("COMMIT") < 5
    assert len(errors) == 1
    assert existing.id in str(errors[0])
    assert await store.count_unfinished() == 21


async def test_a_write_cancelled_while_queued_never_happens(store: SQLiteStorage) -> None:
    await store.save(new_job())
    await store.save(new_job())
    first, second = await store.claim("w1", 2)
    results: dict[str, bool] = {}

    async def settle(job: Job[Any]) -> None:
        results[job.id] = await store.settle(
            job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED
        )

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery, store._lock:  # the connection is busy
            nursery.start_soon(settle, first)  # the flusher, waiting for the connection
            cancel_scope = trio.CancelScope()

            async def cancelled_settle() -> None:
                with cancel_scope:
                    await settle(second)

            nursery.start_soon(cancelled_settle)
            await trio.testing.wait_all_tasks_blocked()
            cancel_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()

    assert results == {first.id: True}
    assert (await store.get(first.id)).status is JobStatus.COMPLETED
    assert (await store.get(second.id)).status is JobStatus.RUNNING
    assert await store.settle(second.id, worker_id="w1", attempt=1, status=JobStatus.FAILED)


async def test_when_the_flusher_is_cancelled_a_waiting_writer_takes_over(
    store: SQLiteStorage,
) -> None:
    await store.save(new_job())
    await store.save(new_job())
    first, second = await store.claim("w1", 2)
    results: dict[str, bool] = {}

    async def settle(job: Job[Any]) -> None:
        results[job.id] = await store.settle(
            job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED
        )

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery, store._lock:
            flusher_scope = trio.CancelScope()

            async def cancelled_flusher() -> None:
                with flusher_scope:
                    await settle(first)

            nursery.start_soon(cancelled_flusher)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(settle, second)
            await trio.testing.wait_all_tasks_blocked()
            flusher_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()

    assert results == {second.id: True}
    assert (await store.get(first.id)).status is JobStatus.RUNNING
    assert (await store.get(second.id)).status is JobStatus.COMPLETED
    assert await store.settle(first.id, worker_id="w1", attempt=1, status=JobStatus.FAILED)


async def test_a_claim_taken_by_a_flusher_reaches_its_cancelled_caller(
    store: SQLiteStorage,
) -> None:
    await store.save(new_job())
    in_thread = threading.Event()
    release = threading.Event()

    def slow(conn: sqlite3.Connection, now: float) -> None:
        in_thread.set()
        release.wait(DEADLINE)

    claimed: list[Job[Any]] = []
    claim_scope = trio.CancelScope()

    async def claimer() -> None:
        with claim_scope:
            jobs = await store.claim("w1", 5)
            claimed.extend(jobs)  # before the next checkpoint delivers the cancel
            await trio.lowlevel.checkpoint()
            raise AssertionError("the cancellation should have been delivered")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            async with store._lock:
                nursery.start_soon(store._write, slow)  # the flusher
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(claimer)  # parks behind it
                await trio.testing.wait_all_tasks_blocked()
            # Both writes are now in one batch, stuck in the thread on `slow`.
            await trio.to_thread.run_sync(in_thread.wait)
            claim_scope.cancel()
            release.set()

    assert claim_scope.cancelled_caught
    assert [job.attempts for job in claimed] == [1]
    assert (await store.get(claimed[0].id)).status is JobStatus.RUNNING
    await store.save(new_job())  # the queue still flows
    assert await store.count_unfinished() == 2


# -- details of this store -----------------------------------------------------------------


async def test_records_always_carry_run_at(store: SQLiteStorage) -> None:
    job = new_job()
    await store.save(job)
    saved = await store.get(job.id)
    assert saved.run_at is not None
    assert saved.run_at >= job.created_at


async def test_update_of_a_running_job_to_a_final_status_drops_the_claim(
    store: SQLiteStorage,
) -> None:
    await store.save(new_job())
    (job,) = await store.claim("w1", 1)

    await store.update(Job(**{**_fields(job), "status": JobStatus.FAILED}))

    assert (await store.heartbeat("w1", [job.id])).lost == {job.id}
    assert not await store.settle(job.id, worker_id="w1", attempt=1, status=JobStatus.COMPLETED)


async def test_update_inserts_an_unknown_job(store: SQLiteStorage) -> None:
    job = new_job()
    await store.update(job)
    got = await store.get(job.id)
    assert got is not None
    assert got.run_at is not None
    assert [j.id for j in await store.claim("w1", 1)] == [job.id]


async def test_a_local_cancel_request_wakes_wait_for_cancel_request(store: SQLiteStorage) -> None:
    await store.save(new_job())
    (job,) = await store.claim("w1", 1)
    woke = trio.Event()

    async def waiter() -> None:
        await store.wait_for_cancel_request(3600)
        woke.set()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await store.request_cancel(job.id)
            await woke.wait()


def _fields(job: Job[Any]) -> dict[str, Any]:
    import attrs

    return attrs.asdict(job, recurse=False)


async def test_opening_waits_for_a_reader_that_blocks_the_switch_to_wal(
    sqlite_path: Path,
) -> None:
    # Switching a file to WAL needs an exclusive lock: opening must wait for a reader
    # of the file (within the busy timeout) instead of failing.
    reader = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        reader.execute("CREATE TABLE other (x)")
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM other").fetchall()  # holds a shared lock
        store = SQLiteStorage(sqlite_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.open)
            await trio.sleep(0.3)
            reader.execute("COMMIT")
        assert raw_journal_mode(sqlite_path) == "wal"
        await store.close()
    finally:
        reader.close()


def raw_journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


# -- read-only opening (issue 17) --------------------------------------------------------------


async def test_read_only_reads_jobs_and_refuses_every_write(sqlite_path: Path) -> None:
    async with SQLiteStorage(sqlite_path) as store:
        await store.save(new_job("mail"))
    before = await trio.Path(sqlite_path).read_bytes()

    async with SQLiteStorage(sqlite_path, read_only=True) as reader:
        assert reader.read_only
        (job,) = await reader.list_jobs()
        assert job.type == "mail"
        assert (await reader.get_stats()).pending == 1
        with pytest.raises(StorageUnavailableError, match="cannot write"):
            await reader.save(new_job())
        with pytest.raises(StorageUnavailableError, match="cannot write"):
            await reader.save_many([new_job() for _ in range(10)])
        with pytest.raises(StorageUnavailableError):
            await reader.request_cancel(job.id)
    assert await trio.Path(sqlite_path).read_bytes() == before


async def test_read_only_leaves_another_programs_database_as_it_was(sqlite_path: Path) -> None:
    conn = raw(sqlite_path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()

    with pytest.raises(StorageCorruptError, match="not a trio_jobs SQLite database"):
        await SQLiteStorage(sqlite_path, read_only=True).open()

    conn = raw(sqlite_path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"notes"}


async def test_read_only_turns_neither_an_empty_nor_a_missing_file_into_a_database(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.db"

    with pytest.raises(StorageCorruptError, match="it has no tables"):
        await SQLiteStorage(empty, read_only=True).open()
    with pytest.raises(StorageCorruptError, match="no SQLite database at"):
        await SQLiteStorage(missing, read_only=True).open()

    assert empty.read_bytes() == b""
    assert not missing.exists()
    assert [p.name for p in await trio.Path(tmp_path).iterdir()] == ["empty.db"]


async def test_read_only_refuses_an_older_schema_that_a_writable_opening_migrates(
    sqlite_path: Path,
) -> None:
    from trio_jobs.storage.sqlite import _schema

    conn = raw(sqlite_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for statement in _schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.close()

    with pytest.raises(StorageCorruptError, match=r"version 1, older .* `trio-jobs migrate`"):
        await SQLiteStorage(sqlite_path, read_only=True).open()

    async with SQLiteStorage(sqlite_path):
        pass
    async with SQLiteStorage(sqlite_path, read_only=True) as reader:
        assert await reader.workers() == []


def test_a_batch_encodes_like_each_job_alone_when_jobs_differ_beyond_id_and_payload() -> None:
    from trio_jobs._records import replace
    from trio_jobs.storage._codec import BatchCodec
    from trio_jobs.storage.sqlite._schema import encode_record, encode_runs

    base = Job(id="a", type="t", payload={"i": 1}, metadata={"m": 1})
    jobs = [
        base,
        replace(base, id="b", payload=[2]),  # shares the rest: its columns are reused
        replace(base, id="c", priority=3),
        replace(base, id="d", metadata={"m": 2}, unique_key="k"),
        replace(base, id="e", payload=None, metadata={"m": 2}, unique_key="k"),
        replace(base, id="f", type="other"),
    ]
    encoded = [
        (job_id, row[1], payload, *row[3:])
        for row, items in encode_runs(jobs, BatchCodec())
        for job_id, payload in items
    ]
    assert encoded == [encode_record(job) for job in jobs]
