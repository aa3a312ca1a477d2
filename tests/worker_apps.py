"""Handlers the process tests run in real worker processes, and helpers to start them.

A worker loads this module as ``trio-jobs worker worker_apps:HANDLERS`` (or
``worker_apps:setup``): the tests put this folder on ``PYTHONPATH``. Handlers that
matter for counting append one line per event to a log file of their own process,
``<TRIO_JOBS_TEST_LOG_DIR>/<pid>.log``: ``start <job id> <attempt>``, ``end ...``,
``cancelled ...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_jobs import Job, JobContext, JobRunner

TESTS_DIR = Path(__file__).resolve().parent


# -- handlers (run inside worker processes) ----------------------------------------------


def _log(event: str, job: Job[Any], ctx: JobContext[Any]) -> None:
    folder = os.environ.get("TRIO_JOBS_TEST_LOG_DIR")
    if not folder:
        return
    # One write per line to a file of this process alone, opened for appending:
    # a line is never torn, even when the process is killed right after.
    fd = os.open(os.path.join(folder, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {job.id} {ctx.attempt}\n".encode())
    finally:
        os.close(fd)


async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
    """Return the payload."""
    await trio.lowlevel.checkpoint()
    return job.payload


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    """Do nothing (benchmarks)."""
    await trio.lowlevel.checkpoint()


async def count(job: Job[Any], ctx: JobContext[Any]) -> Any:
    """Log the attempt's start and end; return the payload."""
    _log("start", job, ctx)
    await trio.lowlevel.checkpoint()
    _log("end", job, ctx)
    return job.payload


async def explode(job: Job[Any], ctx: JobContext[Any]) -> None:
    """Fail with the payload's message."""
    await trio.lowlevel.checkpoint()
    raise RuntimeError(job.payload.get("message", "boom"))


async def nap(job: Job[Any], ctx: JobContext[Any]) -> str:
    """Sleep ``payload["seconds"]`` (a list: one per attempt, the last one repeating).

    Logs ``start`` when it begins, ``cancelled`` if cancelled, ``end`` when done.
    """
    seconds = job.payload["seconds"]
    if isinstance(seconds, list):
        seconds = seconds[min(ctx.attempt, len(seconds)) - 1]
    _log("start", job, ctx)
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        _log("cancelled", job, ctx)
        raise
    _log("end", job, ctx)
    return "rested"


async def metered(job: Job[Any], ctx: JobContext[Any]) -> None:
    """Sleep ``payload["seconds"]``, logging ``flow-start``/``flow-end`` with times.

    Lines go to ``<pid>.flow``: ``start <wall time> <started_at from the store> <id>``
    and ``end <wall time> - <id>`` (flow-control tests read them).
    """
    folder = os.environ.get("TRIO_JOBS_TEST_LOG_DIR")

    def note(line: str) -> None:
        if folder:
            fd = os.open(
                os.path.join(folder, f"{os.getpid()}.flow"),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            )
            try:
                os.write(fd, f"{line}\n".encode())
            finally:
                os.close(fd)

    started = job.started_at.timestamp() if job.started_at else 0.0
    note(f"start {time.time()!r} {started!r} {job.id}")
    try:
        await trio.sleep(job.payload["seconds"])
    finally:
        note(f"end {time.time()!r} - {job.id}")


HANDLERS = {
    "echo": echo,
    "count": count,
    "explode": explode,
    "nap": nap,
    "noop": noop,
    "metered": metered,
}


async def halfway(job: Job[Any], ctx: JobContext[Any]) -> str:
    """Report 60 % progress, then sleep ``payload["seconds"]``."""
    ctx.report_progress(60, "60 of 100")
    await trio.sleep(job.payload["seconds"])
    return "done"


#: :data:`HANDLERS` and ``halfway``, a job that reports progress.
PROGRESS_HANDLERS = {**HANDLERS, "halfway": halfway}


def setup(runner: JobRunner) -> None:
    """Register :data:`HANDLERS` on ``runner`` (the ``setup(runner)`` form of an APP)."""
    for job_type, handler in HANDLERS.items():
        runner.register_handler(job_type, handler)


def setup_ticks(runner: JobRunner) -> None:
    """:func:`setup`, plus a schedule ticking every 0.2 s (every runner tries each tick)."""
    setup(runner)
    runner.add_schedule("noop", every=0.2, key="ticks")


NOT_HANDLERS = 42


def setup_nothing(runner: JobRunner) -> None:
    """A setup function that forgets to register anything."""


# -- helpers for the tests (run in the test process) ---------------------------------------


def cli_env(log_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``trio-jobs`` subprocess: this folder importable, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_JOBS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if log_dir is not None:
        env["TRIO_JOBS_TEST_LOG_DIR"] = str(log_dir)
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    """The command line of ``trio-jobs ARGS`` run as ``python -m trio_jobs``."""
    return [sys.executable, "-m", "trio_jobs", *args]


def store_args(store: Mapping[str, str]) -> list[str]:
    """The ``--db``/``--dsn --schema`` options for a store described as a dict."""
    if store["kind"] == "sqlite":
        return ["--db", store["path"]]
    return ["--dsn", store["dsn"], "--schema", store["schema"]]


class Worker:
    """A ``trio-jobs worker`` subprocess; its stderr goes to a file for post-mortems."""

    def __init__(
        self,
        store: Mapping[str, str],
        *,
        cwd: Path,
        log_dir: Path,
        app: str = "worker_apps:HANDLERS",
        options: Sequence[str] = (),
        name: str = "worker",
    ) -> None:
        self.stderr_path = cwd / f"{name}-{id(self)}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            cli_command("worker", app, *store_args(store), *options),
            cwd=cwd,
            env=cli_env(log_dir),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def pid(self) -> int:
        """The worker's process id (its log file is ``<pid>.log``)."""
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker."""
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the worker (a crash: no cleanup at all)."""
        self.process.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Wait for the worker to exit; return its exit status."""
        return await trio.to_thread.run_sync(self.process.wait)

    def stderr(self) -> str:
        """What the worker logged so far."""
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Kill the worker if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr.close()


def read_logs(log_dir: Path) -> dict[int, list[tuple[str, str, int]]]:
    """Return each worker process's log: ``{pid: [(event, job_id, attempt), ...]}``."""
    logs: dict[int, list[tuple[str, str, int]]] = {}
    for path in log_dir.glob("*.log"):
        lines = path.read_text().splitlines()
        logs[int(path.stem)] = [
            (event, job_id, int(attempt))
            for event, job_id, attempt in (line.split() for line in lines)
        ]
    return logs


def events_by(
    logs: Mapping[int, list[tuple[str, str, int]]], event: str
) -> Counter[tuple[str, int]]:
    """Count ``(job_id, attempt)`` pairs logged with ``event`` across all processes."""
    return Counter(
        (job_id, attempt) for lines in logs.values() for e, job_id, attempt in lines if e == event
    )


async def submit_unique_burst(store: Mapping[str, str], count: int, keys: int) -> None:
    """Submit ``count`` jobs at once over ``keys`` unique keys (run in a subprocess)."""
    from trio_jobs import JobClient, PostgresStorage, SQLiteStorage

    storage: Any
    if store["kind"] == "sqlite":
        storage = SQLiteStorage(store["path"])
    else:
        storage = PostgresStorage(store["dsn"], schema=store["schema"], max_connections=20)
    async with JobClient(storage) as client, trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(partial(client.submit, "noop", i, unique_key=f"key-{i % keys}"))
