"""BlockingJobClient: the API of JobClient for plain threads, on a loop of its own.

Most tests are plain (not Trio) functions, as the client's users are. A runner
that drains the jobs runs in a thread of its own (``worker_in_a_thread``) or, for
the multi-thread test, in a ``trio-jobs worker`` process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import PG_DSN
from trio_jobs import (
    BlockingJobClient,
    Job,
    JobContext,
    JobFailedError,
    JobNotFoundError,
    JobRunner,
    JobStatus,
    PostgresStorage,
    RetryConfig,
    RunnerClosedError,
    SQLiteStorage,
)
from worker_apps import Worker, events_by, read_logs


async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return job.payload


async def explode(job: Job[Any], ctx: JobContext[Any]) -> None:
    await trio.lowlevel.checkpoint()
    raise RuntimeError(f"boom {job.payload}")


@contextmanager
def worker_in_a_thread(path: Path) -> Iterator[None]:
    """A runner for ``echo`` and ``explode`` on the SQLite file, in a Trio loop of its own."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["stop"] = stop = trio.Event()
        box["token"] = trio.lowlevel.current_trio_token()
        runner = JobRunner(
            storage=SQLiteStorage(path),
            poll_interval=0.05,
            default_retry=RetryConfig(max_attempts=1),
        )
        runner.register_handler("echo", echo)
        runner.register_handler("explode", explode)
        async with runner:
            started.set()
            await stop.wait()
            await runner.stop()

    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    try:
        assert started.wait(30)
        yield
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join()


def test_submit_wait_and_read_from_plain_code(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with (
        BlockingJobClient(SQLiteStorage(path), poll_interval=0.05) as jobs,
        worker_in_a_thread(path),
    ):
        job_id = jobs.submit("echo", {"n": 1}, metadata={"from": "test"})
        assert isinstance(job_id, str)
        assert jobs.wait(job_id, timeout=30) == {"n": 1}
        job = jobs.get_job(job_id)
        assert job is not None
        assert (job.status, job.metadata) == (JobStatus.COMPLETED, {"from": "test"})

        failing = jobs.submit("explode", 7, retry={"max_attempts": 1})
        with pytest.raises(JobFailedError, match="boom 7"):
            jobs.wait(failing, timeout=30)
        assert [j.id for j in jobs.list_jobs(status=JobStatus.FAILED)] == [failing]
        stats = jobs.stats()
        assert (stats.completed, stats.failed) == (1, 1)
        assert jobs.retry(failing) is True
        with pytest.raises(JobFailedError, match="boom 7"):
            jobs.wait(failing, timeout=30)
        assert jobs.purge(statuses=[JobStatus.FAILED]) == 1
        assert jobs.get_job(failing) is None
        assert jobs.get_job("nope") is None
        with pytest.raises(JobNotFoundError):
            jobs.wait("nope")


def test_wait_raises_timeout_error_when_the_timeout_passes_first(tmp_path: Path) -> None:
    with BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"), poll_interval=0.05) as jobs:
        job_id = jobs.submit("nobody-runs-this")
        with pytest.raises(TimeoutError, match=job_id):
            jobs.wait(job_id, timeout=0.1)
        assert jobs.cancel(job_id) is True
        job = jobs.get_job(job_id)
        assert job is not None
        assert job.status is JobStatus.CANCELLED
        with pytest.raises(ValueError, match="timeout"):
            jobs.wait(job_id, timeout=-1)


def test_bad_arguments_raise_in_the_calling_thread(tmp_path: Path) -> None:
    with BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db")) as jobs:
        with pytest.raises(ValueError, match="priority"):
            jobs.submit("x", priority=9)
        with pytest.raises(TypeError, match="payload"):
            jobs.submit("x", object())
        assert jobs.stats().pending == 0
    with pytest.raises(ValueError, match="poll_interval"):
        BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"), poll_interval=-1)


def test_open_once_close_twice_and_calls_on_a_closed_client(tmp_path: Path) -> None:
    jobs = BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"))
    with pytest.raises(RunnerClosedError):
        jobs.submit("x")
    jobs.close()  # never opened: harmless
    jobs = BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"))
    with jobs, pytest.raises(RuntimeError, match="once"):
        jobs.open()
    jobs.close()
    with pytest.raises(RunnerClosedError):
        jobs.submit("x")


def test_closing_cancels_a_wait_in_another_thread(tmp_path: Path) -> None:
    jobs = BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"), poll_interval=0.05).open()
    job_id = jobs.submit("nobody-runs-this")
    errors: list[BaseException] = []
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        try:
            jobs.wait(job_id)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    waiting.wait()
    jobs.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], RunnerClosedError)


def test_a_store_that_cannot_open_fails_open(tmp_path: Path) -> None:
    jobs = BlockingJobClient(SQLiteStorage(tmp_path / "missing-folder" / "jobs.db"))
    with pytest.raises(Exception, match=r"missing-folder|unable to open"):
        jobs.open()
    with pytest.raises(RunnerClosedError):
        jobs.submit("x")


async def test_calling_it_from_trio_is_an_error(tmp_path: Path) -> None:
    jobs = BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db"))
    await trio.to_thread.run_sync(jobs.open)
    try:
        with pytest.raises(RuntimeError):
            jobs.stats()
    finally:
        await trio.to_thread.run_sync(jobs.close)


def test_an_unclosed_client_is_closed_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from trio_jobs import BlockingJobClient, SQLiteStorage
        jobs = BlockingJobClient(SQLiteStorage({str(tmp_path / "jobs.db")!r})).open()
        print(jobs.submit("x"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    job_id = done.stdout.strip()
    with BlockingJobClient(SQLiteStorage(tmp_path / "jobs.db")) as jobs:
        job = jobs.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.PENDING


def test_submit_many_delegates_to_job_client(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with (
        BlockingJobClient(SQLiteStorage(path), poll_interval=0.05) as jobs,
        worker_in_a_thread(path),
    ):
        ids = jobs.submit_many("echo", iter([1, 2, 3]), priority=2)
        assert len(ids) == 3
        assert all(isinstance(i, str) for i in ids)
        assert [jobs.wait(i, timeout=30) for i in ids] == [1, 2, 3]
        assert {j.priority for j in jobs.list_jobs()} == {2}


# -- many threads, a worker in another process ----------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"kind": "sqlite", "path": str(tmp_path / "jobs.db")}
    return {"kind": "postgres", "dsn": PG_DSN, "schema": request.getfixturevalue("pg_schema")}


def storage_for(store: dict[str, str]) -> Any:
    if store["kind"] == "sqlite":
        return SQLiteStorage(store["path"])
    return PostgresStorage(store["dsn"], schema=store["schema"])


@pytest.mark.slow
def test_eight_threads_submit_1000_jobs_a_worker_process_runs_each_once(
    store: dict[str, str], tmp_path: Path
) -> None:
    threads, per_thread = 8, 125
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    submitted: dict[int, list[str]] = {}
    results: dict[int, list[Any]] = {}
    failures: list[BaseException] = []
    go = threading.Barrier(threads)

    def producer(n: int, jobs: BlockingJobClient) -> None:
        try:
            go.wait()
            ids = [jobs.submit("count", [n, i]) for i in range(per_thread)]
            submitted[n] = ids
            results[n] = [jobs.wait(job_id, timeout=120) for job_id in ids]
        except BaseException as exc:
            failures.append(exc)

    worker = Worker(store, cwd=tmp_path, log_dir=log_dir, options=["--concurrency", "20"])
    try:
        with BlockingJobClient(storage_for(store), poll_interval=0.05) as jobs:
            pool = [threading.Thread(target=producer, args=(n, jobs)) for n in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            assert failures == []
            stats = jobs.stats()
    finally:
        worker.close()
    assert stats.completed == threads * per_thread
    assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
    for n in range(threads):
        assert results[n] == [[n, i] for i in range(per_thread)]
    every_id = [job_id for ids in submitted.values() for job_id in ids]
    assert len(set(every_id)) == threads * per_thread
    starts = events_by(read_logs(log_dir), "start")
    assert set(starts) == {(job_id, 1) for job_id in every_id}
    assert set(starts.values()) == {1}
