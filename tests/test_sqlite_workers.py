"""SQLiteStorage at rest and at scale (issue 12): the workers table, rescue, wake-ups, idling.

Real files, real threads and, where a test says "another process", a real
subprocess. Real time appears only as generous ``fail_after`` deadlines and short
leases awaited in loops; nothing asserts a duration.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import Job, JobPriority, JobStatus, SQLiteStorage, WorkerInfo
from trio_jobs.storage import Heartbeat, WorkerRegistry
from trio_jobs.storage.sqlite import _schema, _wake

DEADLINE = 10.0  # seconds a condition may take; never asserted on
HAS_PROC_FD = os.path.isdir("/proc/self/fd")
SHORT_LEASE = 0.05


def new_job(job_type: str = "work", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


def worker_info(worker_id: str = "w1", **fields: Any) -> WorkerInfo:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "hostname": "host",
        "pid": 1234,
        "started_at": datetime.now(UTC),
        "last_seen": datetime.now(UTC),
        "concurrency": 10,
        "running": 0,
        "job_types": frozenset({"work"}),
    }
    values.update(fields)
    return WorkerInfo(**values)


@pytest.fixture
async def store(sqlite_path: Path) -> AsyncIterator[SQLiteStorage]:
    async with SQLiteStorage(sqlite_path) as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def row_of(path: Path, job_id: str, columns: str) -> tuple[Any, ...]:
    conn = raw(path)
    try:
        return tuple(conn.execute(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone())
    finally:
        conn.close()


@contextmanager
def traced(store: SQLiteStorage) -> Iterator[list[str]]:
    """The SQL the store's connection runs inside the block."""
    statements: list[str] = []
    conn = store._conn
    assert conn is not None
    conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn.set_trace_callback(None)


def writes(statements: list[str]) -> int:
    return sum(1 for s in statements if s.strip().upper().startswith("BEGIN IMMEDIATE"))


def plan(path: Path, sql: str) -> str:
    conn = raw(path)
    try:
        return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    finally:
        conn.close()


async def wait_for_rescue(store: SQLiteStorage) -> list[Job[Any]]:
    with trio.fail_after(DEADLINE):
        while not (rescued := await store.rescue_expired()):  # noqa: ASYNC110 - time passes
            await trio.sleep(0.01)
    return rescued


async def in_another_process(path: Path, code: str) -> None:
    """Run ``code`` in a new Python process, with ``store`` open on ``path``."""
    script = (
        "import sys, trio\n"
        "from trio_jobs import Job, SQLiteStorage\n"
        "async def main(path):\n"
        "    async with SQLiteStorage(path) as store:\n"
        + "".join(f"        {line}\n" for line in code.strip().splitlines())
        + "trio.run(main, sys.argv[1])\n"
    )
    await trio.run_process([sys.executable, "-c", script, str(path)])


# -- the workers table -------------------------------------------------------------------


async def test_the_store_is_a_worker_registry(store: SQLiteStorage) -> None:
    assert isinstance(store, WorkerRegistry)


async def test_registered_workers_are_listed_oldest_start_first(store: SQLiteStorage) -> None:
    early = datetime.now(UTC) - timedelta(minutes=5)
    await store.register_worker(worker_info("late"))
    await store.register_worker(
        worker_info("early", started_at=early, job_types=frozenset({"a", "b"}), pid=7)
    )

    listed = await store.workers()

    assert [w.worker_id for w in listed] == ["early", "late"]
    first = listed[0]
    assert first.job_types == frozenset({"a", "b"})
    assert first.pid == 7
    assert first.hostname == "host"
    assert first.concurrency == 10
    assert first.started_at == early
    assert first.started_at.tzinfo is UTC
    assert first.last_seen.tzinfo is UTC
    assert abs(first.last_seen - datetime.now(UTC)) < timedelta(seconds=DEADLINE)


async def test_registering_again_replaces_the_row(store: SQLiteStorage) -> None:
    await store.register_worker(worker_info(job_types=frozenset({"a"})))
    await store.register_worker(worker_info(job_types=frozenset({"a", "b"}), concurrency=3))

    (row,) = await store.workers()
    assert row.job_types == frozenset({"a", "b"})
    assert row.concurrency == 3


async def test_unregistering_drops_the_row_and_is_idempotent(store: SQLiteStorage) -> None:
    await store.register_worker(worker_info())
    await store.unregister_worker("w1")
    await store.unregister_worker("w1")
    assert await store.workers() == []


async def test_a_heartbeat_renews_only_the_workers_row(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.register_worker(worker_info())
    for _ in range(3):
        await store.save(new_job())
    jobs = await store.claim("w1", 3)
    before = (await store.workers())[0].last_seen
    # Claims under a row have no lease of their own.
    assert {row_of(sqlite_path, j.id, "lease_expires_at") for j in jobs} == {(None,)}

    with traced(store) as statements:
        beat = await store.heartbeat("w1", [j.id for j in jobs])

    assert beat.cancel_requested == beat.lost == frozenset()
    assert not [s for s in statements if s.lstrip().startswith("UPDATE jobs")]
    assert writes(statements) == 1
    (row,) = await store.workers()
    assert row.running == 3
    assert row.last_seen >= before


async def test_a_heartbeat_under_a_row_reports_cancel_requests_and_lost_claims(
    store: SQLiteStorage,
) -> None:
    await store.register_worker(worker_info())
    for _ in range(3):
        await store.save(new_job())
    asked, kept, gone = await store.claim("w1", 3)
    await store.request_cancel(asked.id)
    await store.delete(gone.id)

    beat = await store.heartbeat("w1", [asked.id, kept.id, gone.id, "never-claimed"])

    assert beat.cancel_requested == {asked.id}
    assert beat.lost == {gone.id, "never-claimed"}


async def test_an_idle_registered_worker_still_heartbeats_its_row(store: SQLiteStorage) -> None:
    await store.register_worker(worker_info())
    before = (await store.workers())[0].last_seen
    with traced(store) as statements:
        await store.heartbeat("w1", [])
    assert writes(statements) == 1
    assert (await store.workers())[0].last_seen >= before


async def test_a_claim_made_before_registering_moves_under_the_row_at_the_next_heartbeat(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.save(new_job())
    (job,) = await store.claim("w1", 1)
    assert row_of(sqlite_path, job.id, "lease_expires_at")[0] is not None

    await store.register_worker(worker_info())
    beat = await store.heartbeat("w1", [job.id])

    assert beat.lost == frozenset()
    assert row_of(sqlite_path, job.id, "lease_expires_at") == (None,)


async def test_a_claim_the_worker_does_not_list_gets_a_lease_of_its_own_and_is_rescued(
    sqlite_path: Path,
) -> None:
    # Its claim never reached the worker: it must not stay RUNNING as long as the
    # worker lives.
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.register_worker(worker_info())
        await store.save(new_job())
        await store.save(new_job())
        known, orphan = await store.claim("w1", 2)
        await store.heartbeat("w1", [known.id])
        assert row_of(sqlite_path, orphan.id, "lease_expires_at")[0] is not None

        rescued = []
        with trio.fail_after(DEADLINE):
            while not rescued:
                await store.heartbeat("w1", [known.id])  # the worker stays alive
                rescued = await store.rescue_expired()
                await trio.sleep(0.01)

        assert [j.id for j in rescued] == [orphan.id]
        assert (await store.get(known.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]


async def test_a_worker_whose_row_expires_is_lost_and_its_jobs_are_rescued(
    sqlite_path: Path,
) -> None:
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.register_worker(worker_info("dead"))
        await store.save(new_job(max_attempts=1))
        await store.save(new_job())
        last_try, retried = await store.claim("dead", 2)

        rescued = {j.id: j for j in await wait_for_rescue(store)}

        assert await store.workers() == []
        assert rescued[retried.id].status is JobStatus.PENDING
        assert rescued[last_try.id].status is JobStatus.FAILED
        error = rescued[last_try.id].last_error
        assert error is not None
        assert error.type == "WorkerLostError"
        assert "dead" in error.message
        assert "heartbeat" in error.message
        conn = raw(sqlite_path)
        try:
            assert conn.execute("SELECT COUNT(*) FROM workers").fetchone() == (0,)
        finally:
            conn.close()


async def test_a_claim_by_a_worker_whose_row_expired_takes_a_lease_of_its_own(
    sqlite_path: Path,
) -> None:
    # A rescuer may be about to drop the row: the new claim must not depend on it.
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.register_worker(worker_info())
        with trio.fail_after(DEADLINE):
            while await store.workers():  # noqa: ASYNC110 - time passes
                await trio.sleep(0.01)
        await store.save(new_job())
        (job,) = await store.claim("w1", 1)
        assert row_of(sqlite_path, job.id, "lease_expires_at")[0] is not None


async def test_a_claim_keeps_the_row_alive_at_least_a_lease_from_now(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.register_worker(worker_info())
    await store.save(new_job())
    conn = raw(sqlite_path)
    try:
        (before,) = conn.execute("SELECT expires_at FROM workers").fetchone()
        (job,) = await store.claim("w1", 1)
        (after,) = conn.execute("SELECT expires_at FROM workers").fetchone()
        (started,) = conn.execute("SELECT started_at FROM jobs WHERE id = ?", (job.id,)).fetchone()
    finally:
        conn.close()
    assert after >= before
    assert after >= started + store.lease_duration


async def test_a_heartbeat_puts_back_a_row_a_rescuer_dropped(sqlite_path: Path) -> None:
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.register_worker(worker_info())
        await store.save(new_job())
        (job,) = await store.claim("w1", 1)
        await wait_for_rescue(store)  # the worker stalled past its row's expiry

        beat = await store.heartbeat("w1", [])

        assert beat.lost == frozenset()
        assert [w.worker_id for w in await store.workers()] == ["w1"]
        assert (await store.get(job.id)).status is JobStatus.PENDING  # type: ignore[union-attr]


async def test_unregistering_with_running_claims_gives_them_leases_of_their_own(
    sqlite_path: Path,
) -> None:
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.register_worker(worker_info())
        await store.save(new_job())
        (job,) = await store.claim("w1", 1)

        await store.unregister_worker("w1")

        assert row_of(sqlite_path, job.id, "lease_expires_at")[0] is not None
        rescued = await wait_for_rescue(store)  # nobody renews it
        assert [j.id for j in rescued] == [job.id]
        assert "lease expired" in rescued[0].last_error.message  # type: ignore[union-attr]


# -- without registering: as before the workers table -----------------------------------


async def test_a_store_used_without_registering_keeps_a_lease_per_job(
    sqlite_path: Path,
) -> None:
    async with SQLiteStorage(sqlite_path, lease_duration=SHORT_LEASE) as store:
        await store.save(new_job())
        await store.save(new_job())
        renewed, dropped = await store.claim("w1", 2)
        (lease,) = row_of(sqlite_path, renewed.id, "lease_expires_at")
        assert lease is not None

        with traced(store) as statements:
            assert await store.heartbeat("w1", []) == Heartbeat()
        assert writes(statements) == 0  # nothing held, no row: nothing written

        rescued: list[Job[Any]] = []
        with trio.fail_after(DEADLINE):
            while not rescued:
                beat = await store.heartbeat("w1", [renewed.id])
                assert beat.lost == frozenset()
                rescued = await store.rescue_expired()
                await trio.sleep(0.01)
        (new_lease,) = row_of(sqlite_path, renewed.id, "lease_expires_at")
        assert new_lease > lease
        assert [j.id for j in rescued] == [dropped.id]
        assert "lease expired" in rescued[0].last_error.message  # type: ignore[union-attr]
        assert await store.workers() == []


# -- rescue reads only what is lost ---------------------------------------------------------


async def _fill_running(path: Path, worker_id: str, count: int) -> None:
    """Add ``count`` running claims covered by ``worker_id``'s row, in plain SQL."""
    conn = raw(path)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, type, status, priority, attempts, max_attempts, created_at,"
            " run_at, metadata, worker_id, started_at) VALUES"
            " (?, 'work', 'running', 1, 1, 3, 0, 0, '{}', ?, 0)",
            ((uuid.uuid4().hex, worker_id) for _ in range(count)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _rescue_steps(store: SQLiteStorage) -> tuple[list[Job[Any]], int]:
    """Rescue, counting the SQLite VM instructions the store's connection ran."""
    conn = store._conn
    assert conn is not None
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        rescued = await store.rescue_expired()
    finally:
        conn.set_progress_handler(None, 1)
    return rescued, steps[0]


async def _rescue_beside_live_jobs(path: Path, live_jobs: int) -> int:
    """Rescue 3 jobs of a stale worker and 1 expired lease beside ``live_jobs`` jobs
    of a live worker; check what was rescued; return the VM instructions it took."""
    async with (
        SQLiteStorage(path, lease_duration=3600) as live,
        SQLiteStorage(path, lease_duration=SHORT_LEASE) as short,
    ):
        await live.register_worker(worker_info("live"))
        await _fill_running(path, "live", live_jobs)
        await short.register_worker(worker_info("stale"))
        for _ in range(3):
            await short.save(new_job())
        stale = await short.claim("stale", 3)
        await short.save(new_job())
        (legacy,) = await short.claim("unregistered", 1)
        with trio.fail_after(DEADLINE):
            while len(await short.workers()) > 1:  # noqa: ASYNC110 - time passes
                await trio.sleep(0.01)
            expiry = row_of(path, legacy.id, "lease_expires_at")[0]
            await trio.sleep(max(0.0, expiry - datetime.now(UTC).timestamp()) + 0.01)

        rescued, steps = await _rescue_steps(short)

        assert {j.id for j in rescued} == {j.id for j in stale} | {legacy.id}
        assert (await live.get_stats()).running == live_jobs
        assert [w.worker_id for w in await live.workers()] == ["live"]
    return steps


async def test_rescue_touches_only_the_stale_workers_jobs(tmp_path: Path) -> None:
    few = await _rescue_beside_live_jobs(tmp_path / "few.db", 10)
    many = await _rescue_beside_live_jobs(tmp_path / "many.db", 3000)
    # The work done does not grow with the live worker's jobs: as many VM
    # instructions beside 3,000 of them as beside 10.
    assert few == many, (few, many)
    assert few > 0


async def test_rescue_statements_use_their_indexes(store: SQLiteStorage, sqlite_path: Path) -> None:
    await store.register_worker(worker_info())
    await store.save(new_job())
    await store.claim("w1", 1)
    conn = raw(sqlite_path)
    conn.execute("UPDATE workers SET expires_at = 0")  # stale, whatever the clock says
    conn.close()
    with traced(store) as statements:
        assert len(await store.rescue_expired()) == 1
    selects = [s for s in statements if s.lstrip().startswith("SELECT")]
    plans = [plan(sqlite_path, s) for s in selects]
    assert len(plans) == 4  # the probe, stale rows, their claims, expired leases
    joined = " || ".join(plans)
    for index in ("workers_expiry", "jobs_claims", "jobs_leases"):
        assert f"INDEX {index}" in joined, joined
    assert "SCAN jobs" not in joined, joined
    assert "SCAN workers" not in joined, joined


async def test_rescue_without_anything_expired_takes_no_write_lock(
    store: SQLiteStorage,
) -> None:
    await store.register_worker(worker_info())
    await store.save(new_job())
    await store.claim("w1", 1)
    with traced(store) as statements:
        assert await store.rescue_expired() == []
    assert writes(statements) == 0


# -- delayed jobs stay out of the claim path -----------------------------------------------


async def test_the_claim_seeks_each_prioritys_due_range(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.save(new_job())
    with traced(store) as statements:
        await store.claim("w1", 1, ["work"])
    (sql,) = [s for s in statements if s.lstrip().startswith("UPDATE jobs")]
    claim_plan = plan(sqlite_path, sql)
    assert "USING INDEX jobs_ready (priority=? AND run_at<?)" in claim_plan
    assert "TEMP B-TREE" not in claim_plan


async def test_delayed_higher_priority_jobs_are_not_walked_past(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    conn = raw(sqlite_path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, type, status, priority, attempts, max_attempts, created_at,"
        " run_at, metadata) VALUES (?, 'work', 'pending', 3, 0, 3, 0, 9e12, '{}')",
        ((uuid.uuid4().hex,) for _ in range(5000)),
    )
    conn.execute("COMMIT")
    conn.close()
    await store.save(new_job(priority=JobPriority.LOW))
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    assert store._conn is not None
    store._conn.set_progress_handler(count, 1)
    (job,) = await store.claim("w1", 1, ["work"])
    store._conn.set_progress_handler(None, 1)

    assert job.priority is JobPriority.LOW
    assert steps[0] < 2000  # walking 5,000 index entries would take several per entry


async def test_claim_order_and_run_at_are_unchanged(store: SQLiteStorage) -> None:
    await store.save(new_job(priority=JobPriority.HIGH), delay=3600)
    first_normal = new_job()
    await store.save(first_normal)
    second_normal = new_job()
    await store.save(second_normal)
    low = new_job(priority=JobPriority.LOW)
    await store.save(low)
    critical = new_job(priority=JobPriority.CRITICAL)
    await store.save(critical)

    claimed = await store.claim("w1", 10)

    assert [j.id for j in claimed] == [critical.id, first_normal.id, second_normal.id, low.id]
    assert [j.id for j in await store.get_next_pending(10)] == []


# -- wake-ups between processes ---------------------------------------------------------------


async def test_a_commit_in_another_process_wakes_an_idle_waiter_without_the_poll(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.wait_for_work(0)  # binds the wake-up socket (and returns at once)
    assert await store.claim("w1", 10) == []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.wait_for_work, 3600)  # the poll: an hour
            await trio.testing.wait_all_tasks_blocked()
            await in_another_process(sqlite_path, "await store.save(Job(id='x', type='work'))")
    assert [j.id for j in await store.claim("w1", 10)] == ["x"]


async def test_a_cancel_request_in_another_process_wakes_the_runner_at_once(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.save(Job(id="x", type="work"))
    await store.claim("w1", 1)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.wait_for_cancel_request, 3600)
            await trio.testing.wait_all_tasks_blocked()
            await in_another_process(sqlite_path, "await store.request_cancel('x')")
    assert (await store.heartbeat("w1", ["x"])).cancel_requested == {"x"}


async def test_a_delayed_job_saved_elsewhere_wakes_the_waiter_when_due(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.wait_for_work(0)
    assert await store.claim("w1", 10) == []
    async with SQLiteStorage(sqlite_path) as producer:
        with trio.fail_after(DEADLINE):
            await producer.save(Job(id="later", type="work"), delay=0.2)
            claimed: list[Job[Any]] = []
            while not claimed:
                await store.wait_for_work(3600)  # wakes on the datagram, then when due
                claimed = await store.claim("w1", 10)
    assert [j.id for j in claimed] == ["later"]


async def test_no_write_transaction_while_nothing_is_claimable(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    await store.wait_for_work(0)
    assert await store.claim("w1", 10, ["work"]) == []
    async with SQLiteStorage(sqlite_path) as producer:
        with traced(store) as statements, trio.fail_after(DEADLINE):
            for i in range(10):
                if i % 2:
                    await producer.save(new_job("not-mine"))
                else:
                    await producer.save(new_job(), delay=3600)
                await store.wait_for_work(3600)  # woken by each commit
                assert await store.claim("w1", 10, ["work"]) == []
    assert writes(statements) == 0
    assert any("SELECT 1 FROM jobs" in s for s in statements)  # it did look


def sockets(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


async def test_a_dead_processs_socket_is_removed_by_the_next_sender(
    store: SQLiteStorage, sqlite_path: Path
) -> None:
    directory = Path(_wake.wake_directory(str(sqlite_path)) or "")
    await store.wait_for_work(0)
    (own,) = sockets(directory)
    dead = directory / "999999-deadbeef0000-w.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dead))
    sock.close()  # as a killed process leaves it: the file stays, nobody listens

    async with SQLiteStorage(sqlite_path) as producer:
        await producer.save(new_job())

    assert sockets(directory) == [own]
    await store.close()
    assert sockets(directory) == []  # a store removes its own on close


async def test_wake_ups_work_beside_a_database_with_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "jobs.db"
    if not HAS_PROC_FD:
        pytest.skip("long socket paths need /proc/self/fd")
    async with SQLiteStorage(path) as waiter, SQLiteStorage(path) as producer:
        await waiter.wait_for_work(0)
        assert waiter._wake is not None
        assert waiter._wake.listener("w") is not None
        assert await waiter.claim("w1", 1) == []
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter.wait_for_work, 3600)
                await trio.testing.wait_all_tasks_blocked()
                await producer.save(new_job())
        assert len(await waiter.claim("w1", 1)) == 1


async def test_an_in_memory_database_only_polls() -> None:
    async with SQLiteStorage(":memory:") as store:
        with trio.fail_after(DEADLINE):
            await store.wait_for_work(0.01)
        assert store._wake is None


# -- migration ----------------------------------------------------------------------------------


async def test_a_version_1_file_is_migrated_and_its_leases_still_rescued(
    sqlite_path: Path,
) -> None:
    conn = raw(sqlite_path)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for statement in _schema.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.execute(
        "INSERT INTO jobs (id, type, status, priority, attempts, max_attempts, created_at,"
        " run_at, metadata, worker_id, lease_expires_at, started_at)"
        " VALUES ('old', 'work', 'running', 1, 1, 3, 0, 0, '{}', 'gone', 1, 0)"
    )
    conn.close()

    async with SQLiteStorage(sqlite_path) as store:
        (rescued,) = await store.rescue_expired()
        assert rescued.id == "old"
        assert rescued.status is JobStatus.PENDING
        assert await store.workers() == []

    conn = raw(sqlite_path)
    try:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
        assert versions == list(range(1, _schema.SCHEMA_VERSION + 1))
    finally:
        conn.close()
