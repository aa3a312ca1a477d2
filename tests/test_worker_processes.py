"""Durable stores with real worker processes: crashes, sharing, cancellation, signals.

Each test starts ``trio-jobs worker`` subprocesses on a real SQLite file or a real
PostgreSQL schema of its own, drives them from this process with a
:class:`JobClient` (another process, as far as the workers can tell) and checks
the store and the workers' own logs (see ``worker_apps``). Real time appears only
as generous ``fail_after`` deadlines; conditions are awaited by polling the store.
Measured latencies are printed (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import PG_DSN
from trio_jobs import JobClient, JobStatus, PostgresStorage, SQLiteStorage
from worker_apps import Worker, cli_command, cli_env, events_by, read_logs, store_args

pytestmark = pytest.mark.slow

Store = dict[str, str]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Where the workers and the test meet: a fresh SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "jobs.db")}
    return {"kind": "postgres", "dsn": PG_DSN, "schema": request.getfixturevalue("pg_schema")}


@pytest.fixture
def pg_store(pg_schema: str) -> Store:
    """A fresh PostgreSQL schema (tests of the distributed engine alone)."""
    return {"kind": "postgres", "dsn": PG_DSN, "schema": pg_schema}


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where worker processes write their ``<pid>.log``."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def spawn(tmp_path: Path, log_dir: Path) -> Iterator[Callable[..., Worker]]:
    """Start worker processes; any still running at the end are killed."""
    workers: list[Worker] = []

    def start(store: Store, *options: str, app: str = "worker_apps:HANDLERS") -> Worker:
        worker = Worker(store, cwd=tmp_path, log_dir=log_dir, app=app, options=options, name="w")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def client(store: Store, **options: Any) -> JobClient:
    """A producer on the store, in this process."""
    if store["kind"] == "sqlite":
        storage: Any = SQLiteStorage(store["path"])
    else:
        # Named, so that tests cutting the workers' connections spare this one.
        storage = PostgresStorage(
            f"{store['dsn']}?application_name=test-client", schema=store["schema"]
        )
    return JobClient(storage, **options)


async def poll(condition: Callable[[], Awaitable[bool]], interval: float = 0.05) -> None:
    """Return once ``condition()`` is true (the caller's deadline bounds the wait)."""
    # Another process changes the store: polling it is the only way to see that.
    while not await condition():  # noqa: ASYNC110
        await trio.sleep(interval)


async def until_started(worker: Worker) -> None:
    """Wait until the worker logged that it runs."""

    async def ready() -> bool:
        await trio.lowlevel.checkpoint()
        assert worker.process.poll() is None, worker.stderr()
        return "started on" in worker.stderr()

    await poll(ready)


async def until_logged(log_dir: Path, pid: int, event: str, job_id: str, attempt: int) -> None:
    """Wait until process ``pid`` logged ``event`` for the attempt."""

    async def logged() -> bool:
        await trio.lowlevel.checkpoint()
        return (event, job_id, attempt) in read_logs(log_dir).get(pid, [])

    await poll(logged, 0.02)


async def until_status(jobs: JobClient, job_id: str, *statuses: JobStatus) -> Any:
    """Wait until the job has one of ``statuses``; return its snapshot."""
    found: list[Any] = []

    async def reached() -> bool:
        job = await jobs.get_job(job_id)
        found[:] = [job]
        return job is not None and job.status in statuses

    await poll(reached)
    return found[0]


async def cli_json(store: Store, cwd: Path, *args: str) -> Any:
    """Run ``trio-jobs ARGS --json`` in a fresh process and parse its output."""
    result = await trio.run_process(
        cli_command(*args, *store_args(store), "--json"),
        cwd=cwd,
        env=cli_env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


# -- a job outlives its producer; results outlive the worker ------------------------------


async def test_job_submitted_before_any_worker_runs_when_one_starts(
    store: Store, spawn: Callable[..., Worker], tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with client(store) as jobs:
            ok = await jobs.submit("echo", {"answer": 42})
            bad = await jobs.submit(
                "explode", {"message": "disk on fire"}, retry={"max_attempts": 1}
            )
            assert (await jobs.get_job(ok.id)).status is JobStatus.PENDING

            worker = spawn(store, "--poll-interval", "0.2", app="worker_apps:setup")
            assert await ok.wait() == {"answer": 42}
            await until_status(jobs, bad.id, JobStatus.FAILED)

        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0, worker.stderr()

        # A fresh process reads what the worker recorded.
        done = await cli_json(store, tmp_path, "show", ok.id)
        failed = await cli_json(store, tmp_path, "show", bad.id)
    assert done["status"] == "completed"
    assert done["result"] == {"answer": 42}
    assert done["attempts"] == 1
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    error = failed["last_error"]
    assert error["message"] == "disk on fire"
    assert error["type"] == "RuntimeError"
    assert "in explode" in error["traceback"]
    assert "raise RuntimeError" in error["traceback"]


# -- crashes --------------------------------------------------------------------------------


async def test_killed_worker_jobs_run_again_within_a_lease_or_fail_as_lost(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    lease = ("--lease-duration", "1.0", "--poll-interval", "0.2")
    with trio.fail_after(60):
        async with client(store) as jobs:
            first = spawn(store, *lease)
            await until_started(first)
            again = await jobs.submit("nap", {"seconds": [60, 0]})
            last = await jobs.submit("nap", {"seconds": 60}, retry={"max_attempts": 1})
            await until_logged(log_dir, first.pid, "start", again.id, 1)
            await until_logged(log_dir, first.pid, "start", last.id, 1)

            second = spawn(store, *lease)
            await until_started(second)
            first.kill()
            assert await first.wait() == -signal.SIGKILL
            killed_at = time.monotonic()

            await until_logged(log_dir, second.pid, "start", again.id, 2)
            rerun_after = time.monotonic() - killed_at
            done = await until_status(jobs, again.id, JobStatus.COMPLETED)
            lost = await until_status(jobs, last.id, JobStatus.FAILED)
            lost_after = time.monotonic() - killed_at
    print(f"\n[{store['kind']}] lease 1.0 s: rerun {rerun_after:.2f} s, lost {lost_after:.2f} s")
    assert done.attempts == 2  # the crashed attempt counts
    assert done.result == "rested"
    assert lost.attempts == 1
    assert lost.last_error is not None
    assert "lost" in lost.last_error.message
    logs = read_logs(log_dir)
    assert ("start", last.id, 2) not in logs[second.pid]


# -- sharing one store ------------------------------------------------------------------------


async def test_two_workers_share_300_jobs_each_attempt_started_once(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(90):
        workers = [spawn(store, "--poll-interval", "0.1") for _ in range(2)]
        for worker in workers:
            await until_started(worker)
        async with client(store) as jobs:
            ids = [(await jobs.submit("nap", {"seconds": 0.01})).id for _ in range(300)]

            async def all_done() -> bool:
                return (await jobs.stats()).completed == 300

            await poll(all_done, 0.1)
            finished = [await jobs.get_job(job_id) for job_id in ids]
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            assert await worker.wait() == 0, worker.stderr()

    assert all(job.status is JobStatus.COMPLETED and job.attempts == 1 for job in finished)
    logs = read_logs(log_dir)
    starts = events_by(logs, "start")
    assert set(starts) == {(job_id, 1) for job_id in ids}
    assert all(n == 1 for n in starts.values()), [k for k, n in starts.items() if n > 1]
    per_worker = {pid: sum(e == "start" for e, _, _ in lines) for pid, lines in logs.items()}
    assert set(per_worker) == {w.pid for w in workers}
    assert all(n > 0 for n in per_worker.values()), per_worker
    print(f"\n[{store['kind']}] jobs per worker: {sorted(per_worker.values())}")


# -- cancellation across processes -------------------------------------------------------------


async def test_cancel_from_another_process_stops_a_running_job(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(60):
        worker = spawn(store)  # default poll interval and lease: what users get
        async with client(store) as jobs:
            job = await jobs.submit("nap", {"seconds": 60})
            await until_logged(log_dir, worker.pid, "start", job.id, 1)
            asked = time.monotonic()
            assert await jobs.cancel(job.id) is True
            await until_logged(log_dir, worker.pid, "cancelled", job.id, 1)
            stopped_after = time.monotonic() - asked
            cancelled = await until_status(jobs, job.id, JobStatus.CANCELLED)
        worker.signal(signal.SIGINT)
        assert await worker.wait() == 0, worker.stderr()
    print(f"\n[{store['kind']}] cancel reached the running job after {stopped_after * 1000:.0f} ms")
    assert cancelled.attempts == 1
    assert f"job {job.id} nap cancelled" in worker.stderr()


# -- signals -------------------------------------------------------------------------------------


async def test_first_signal_lets_running_job_finish_second_forces(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(60):
        async with client(store) as jobs:
            running = await jobs.submit("nap", {"seconds": 1.5})
            worker = spawn(store, "--concurrency", "1", "--poll-interval", "0.2")
            await until_logged(log_dir, worker.pid, "start", running.id, 1)
            waiting = await jobs.submit("nap", {"seconds": 60})

            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0, worker.stderr()
            assert (await jobs.get_job(running.id)).status is JobStatus.COMPLETED
            assert ("end", running.id, 1) in read_logs(log_dir)[worker.pid]
            left = await jobs.get_job(waiting.id)
            assert left.status is JobStatus.PENDING  # not started: the worker was stopping
            assert left.attempts == 0
            assert "stopping after the running jobs finish" in worker.stderr()

            forced = spawn(store, "--poll-interval", "0.2")
            await until_logged(log_dir, forced.pid, "start", waiting.id, 1)
            forced.signal(signal.SIGTERM)
            forced.signal(signal.SIGINT)
            assert await forced.wait() == 0, forced.stderr()
            assert ("cancelled", waiting.id, 1) in read_logs(log_dir)[forced.pid]
            back = await jobs.get_job(waiting.id)
    # An orderly shutdown is not the job's fault: it waits again, the attempt uncounted.
    assert back.status is JobStatus.PENDING
    assert back.attempts == 0
    assert "cancelling the running jobs" in forced.stderr()


# -- PostgreSQL: many workers, crashes and lost connections ---------------------------------------


async def test_four_workers_2000_jobs_one_killed_midway_nothing_lost_nothing_twice(
    pg_store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    total = 2000
    with trio.fail_after(120):
        workers = [spawn(pg_store, "--lease-duration", "1.0") for _ in range(4)]
        for worker in workers:
            await until_started(worker)
        victim, survivors = workers[0], workers[1:]
        async with client(pg_store) as jobs:
            for _batch in range(total // 200):
                async with trio.open_nursery() as nursery:
                    for _ in range(200):
                        nursery.start_soon(jobs.submit, "nap", {"seconds": 0.02})
            started = time.monotonic()

            async def halfway() -> bool:
                return (await jobs.stats()).completed >= total // 2

            await poll(halfway, 0.02)
            victim.kill()
            await victim.wait()

            async def all_done() -> bool:
                return (await jobs.stats()).completed == total

            await poll(all_done, 0.1)
            elapsed = time.monotonic() - started
            finished = await jobs.storage.list_jobs(limit=total + 1)
        for worker in survivors:
            worker.signal(signal.SIGTERM)
        for worker in survivors:
            assert await worker.wait() == 0, worker.stderr()

    assert len(finished) == total
    assert all(job.status is JobStatus.COMPLETED for job in finished)
    attempts = {job.id: job.attempts for job in finished}
    logs = read_logs(log_dir)
    starts, ends = events_by(logs, "start"), events_by(logs, "end")
    # No attempt ran twice; the attempt whose result stands ran to its end exactly once.
    assert all(n == 1 for n in starts.values())
    assert all(ends[(job_id, n)] == 1 for job_id, n in attempts.items())
    # What the victim held when it died was rescued, its crashed attempt counted. It
    # always holds claims while work remains (a claim commits with the settles of
    # the attempts whose slots it fills), but it may die before their handlers
    # start: a rescued job need not have a start in the victim's log.
    rescued_jobs = {j for j, n in attempts.items() if n > 1}
    victim_attempts = {(j, a) for e, j, a in logs.get(victim.pid, []) if e == "start"}
    overtaken = {j for j, a in victim_attempts if attempts[j] != a}
    assert rescued_jobs, (
        "the victim held no claim when it was killed:"
        f" {len(victim_attempts)} attempts, log ends with {logs.get(victim.pid, [])[-3:]},"
        f" ends per worker {[sum(e == 'end' for e, _, _ in lines) for lines in logs.values()]}"
    )
    # An attempt the victim started and never finished was followed by a later one.
    assert all(attempts[j] > a for j, a in victim_attempts if not ends.get((j, a)))
    for worker in survivors:
        survivor_ends = [(j, a) for e, j, a in logs[worker.pid] if e == "end"]
        assert all(attempts[j] == a for j, a in survivor_ends)
    rescued = len(rescued_jobs)
    per_worker = sorted(sum(e == "end" for e, _, _ in lines) for lines in logs.values())
    print(
        f"\n[postgres] {total} jobs, 4 workers, one killed: {elapsed:.1f} s,"
        f" {rescued} rescued ({len(overtaken)} started by the victim),"
        f" ends per worker {per_worker}"
    )


async def test_worker_survives_its_connections_being_terminated(
    pg_store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    import psycopg

    total = 600

    def sessions(verb: str) -> int:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            rows = conn.execute(
                f"SELECT {verb} FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"trio_jobs:{pg_store['schema']}%",),
            ).fetchall()
        return len(rows)

    async def terminate_workers_sessions() -> int:
        # After a first round the pool reconnects lazily: wait until sessions are
        # back, so that each round really cuts live connections.
        async def live() -> bool:
            return await trio.to_thread.run_sync(sessions, "pid") > 0

        await poll(live, 0.02)
        return await trio.to_thread.run_sync(sessions, "pg_terminate_backend(pid)")

    with trio.fail_after(120):
        worker = spawn(pg_store, "--lease-duration", "2.0", "--poll-interval", "0.2")
        await until_started(worker)
        async with client(pg_store) as jobs:
            ids = []
            for _ in range(total):
                ids.append((await jobs.submit("nap", {"seconds": 0.02})).id)
            terminated = []
            for fraction in (4, 2):

                async def reached(fraction: int = fraction) -> bool:
                    return (await jobs.stats()).completed >= total // fraction

                await poll(reached, 0.02)
                terminated.append(await terminate_workers_sessions())

            async def all_done() -> bool:
                return (await jobs.stats()).completed == total

            await poll(all_done, 0.1)
            finished = [await jobs.get_job(job_id) for job_id in ids]
        assert worker.process.poll() is None, worker.stderr()
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0, worker.stderr()

    assert all(t > 0 for t in terminated), terminated
    assert all(job.status is JobStatus.COMPLETED for job in finished)
    ends = events_by(read_logs(log_dir), "end")
    assert all(ends[(job.id, job.attempts)] == 1 for job in finished)
    print(f"\n[postgres] terminated {terminated} sessions; all {total} jobs completed")
