"""A durable queue on one machine: trio_jobs on SQLite vs huey's SqliteHuey, in one run.

For each queue, on a fresh file in a temporary directory:

- **submit**: a producer in this process enqueues N no-op jobs one by one;
- **drain**: then one worker process with 10 concurrent slots runs them all
  (``trio-jobs worker`` with concurrency 10; ``huey_consumer -w 10 -k thread``).
  Measured from the first job's start to the last job's completion, so the
  worker's start-up is not counted: trio_jobs from the ``started_at`` and
  ``completed_at`` the store records, huey from timestamps its task takes;
- **processes**: ``--scale-jobs`` (20,000) jobs, stored beforehand, drained by
  one worker process, then by four together (each with 10 slots): the four
  should reach at least the one's rate (no collapse under contention for the
  file's write lock);
- **latency**: single jobs trickled to the idle worker, one at a time, 25-75 ms
  apart at random (a trickle, not a burst); submit->start measured from the
  job's creation to its start (trio_jobs: ``created_at`` -> ``started_at``; huey:
  the enqueue time passed to the task -> the task's first line). p50 and p95.

huey runs only when importable (``pip install huey``; ``nox -s bench`` installs
it); it is never a dependency of trio_jobs. Its consumer runs twice: polling an
empty queue every 0.1 s (``-d 0.1 -m 0.1``: its default minimum delay, without
the default backoff to 10 s, which would make the trickle measure the backoff),
and every 0.01 s (tuned for latency, at 1,000 idle queries a second).
The trio_jobs worker runs with its defaults, logging at WARNING (INFO writes two
lines per job).

    python bench/sqlite.py [--jobs 5000] [--samples 200]

This file is also the workers' APP: ``trio-jobs worker sqlite:HANDLERS`` and
``huey_consumer sqlite.huey_app`` import it by the name ``sqlite``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from trio_jobs import Job, JobClient, JobContext, JobStatus, SQLiteStorage

BENCH_DIR = Path(__file__).resolve().parent
#: huey consumer polling delays to run: its default minimum, and one tuned for latency.
HUEY_DELAYS = ("0.1", "0.01")


# -- what the worker processes run ----------------------------------------------------------


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    await trio.lowlevel.checkpoint()


HANDLERS = {"noop": noop}


def _make_huey(path: str, marks: str | None, total: int) -> Any:
    from huey import SqliteHuey

    app = SqliteHuey("bench", filename=path)
    lock = threading.Lock()
    state = {"done": 0, "first": 0.0}

    @app.task(name="noop")
    def huey_noop(i: int) -> None:
        now = time.time()
        with lock:
            if state["done"] == 0:
                state["first"] = now
            state["done"] += 1
            if marks and state["done"] == total:
                Path(marks).write_text(f"{state['first']} {time.time()}")

    @app.task(name="latency")
    def huey_latency(enqueued_at: float) -> float:
        return time.time() - enqueued_at

    app.bench_tasks = (huey_noop, huey_latency)
    return app


huey_app = (
    _make_huey(
        os.environ["BENCH_HUEY_DB"],
        os.environ.get("BENCH_HUEY_MARKS"),
        int(os.environ.get("BENCH_HUEY_TOTAL", "0")),
    )
    if "BENCH_HUEY_DB" in os.environ
    else None
)


# -- measuring --------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


async def _poll(condition: Any, interval: float) -> None:
    while not await condition():  # noqa: ASYNC110 - another process changes the store
        await trio.sleep(interval)


async def bench_trio_jobs(folder: Path, total: int, samples: int) -> dict[str, float]:
    db = str(folder / "trio_jobs.db")
    async with JobClient(SQLiteStorage(db)) as client:
        start = time.perf_counter()
        for i in range(total):
            await client.submit("noop", {"i": i})
        submit = time.perf_counter() - start

        worker = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_jobs", "worker", "sqlite:HANDLERS", "--db", db,
             "--concurrency", "10", "--log-level", "WARNING"],
            cwd=BENCH_DIR,
            env=_env(),
        )  # fmt: skip
        try:

            async def drained() -> bool:
                return (await client.stats()).completed == total

            with trio.fail_after(600):
                await _poll(drained, 0.05)
            jobs = await client.storage.list_jobs(limit=total)
            first = min(job.started_at for job in jobs if job.started_at)
            last = max(job.completed_at for job in jobs if job.completed_at)
            drain = (last - first).total_seconds()

            latencies = []
            for _ in range(samples):
                await trio.sleep(random.uniform(0.025, 0.075))
                handle = await client.submit("noop")
                done: list[Job[Any]] = []

                async def finished(job_id: str = handle.id, out: list[Job[Any]] = done) -> bool:
                    job = await client.get_job(job_id)
                    out[:] = [job] if job else []
                    return job is not None and job.status is JobStatus.COMPLETED

                with trio.fail_after(60):
                    await _poll(finished, 0.002)
                job = done[0]
                assert job.started_at is not None
                latencies.append((job.started_at - job.created_at).total_seconds())
        finally:
            worker.send_signal(signal.SIGTERM)
            with trio.CancelScope(shield=True):
                await worker.wait()
    p50, p95 = _percentiles(latencies)
    return {"submit": total / submit, "drain": total / drain, "p50": p50, "p95": p95}


async def bench_processes(folder: Path, total: int, processes: int) -> float:
    """Drain ``total`` jobs (stored beforehand) with ``processes`` workers; jobs/s."""
    db = str(folder / f"trio_jobs-x{processes}.db")
    async with JobClient(SQLiteStorage(db)) as client:

        async def save(chunk: range) -> None:
            for i in chunk:
                await client.storage.save(Job(id=uuid.uuid4().hex, type="noop", payload={"i": i}))

        async with trio.open_nursery() as nursery:  # group-committed
            for k in range(100):
                nursery.start_soon(save, range(k, total, 100))
        command = [sys.executable, "-m", "trio_jobs", "worker", "sqlite:HANDLERS", "--db", db,
                   "--concurrency", "10", "--log-level", "WARNING"]  # fmt: skip
        workers = [
            await trio.lowlevel.open_process(command, cwd=BENCH_DIR, env=_env())
            for _ in range(processes)
        ]
        try:

            async def drained() -> bool:
                return (await client.stats()).completed == total

            with trio.fail_after(600):
                await _poll(drained, 0.05)
            jobs = await client.storage.list_jobs(limit=total)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            with trio.CancelScope(shield=True):
                for worker in workers:
                    await worker.wait()
    first = min(job.started_at for job in jobs if job.started_at)
    last = max(job.completed_at for job in jobs if job.completed_at)
    return total / (last - first).total_seconds()


async def bench_huey(folder: Path, total: int, samples: int, delay: str) -> dict[str, float]:
    db, marks = str(folder / f"huey-{delay}.db"), folder / f"huey-{delay}.marks"
    app = _make_huey(db, None, total)
    huey_noop, huey_latency = app.bench_tasks
    start = time.perf_counter()
    for i in range(total):
        huey_noop(i)
    submit = time.perf_counter() - start

    consumer = await trio.lowlevel.open_process(
        [sys.executable, "-m", "huey.bin.huey_consumer", "sqlite.huey_app",
         "-w", "10", "-k", "thread", "-d", delay, "-m", delay, "-q"],
        cwd=BENCH_DIR,
        env=_env(BENCH_HUEY_DB=db, BENCH_HUEY_MARKS=str(marks), BENCH_HUEY_TOTAL=str(total)),
    )  # fmt: skip
    try:

        async def drained() -> bool:
            return await trio.Path(marks).exists()

        with trio.fail_after(600):
            await _poll(drained, 0.05)
        first, last = map(float, (await trio.Path(marks).read_text()).split())
        drain = last - first

        latencies = []
        for _ in range(samples):
            await trio.sleep(random.uniform(0.025, 0.075))
            result = huey_latency(time.time())
            with trio.fail_after(60):
                while (value := result.get()) is None:  # noqa: ASYNC110 - huey polls
                    await trio.sleep(0.002)
            latencies.append(value)
    finally:
        consumer.send_signal(signal.SIGINT)
        with trio.CancelScope(shield=True):
            await consumer.wait()
    p50, p95 = _percentiles(latencies)
    return {"submit": total / submit, "drain": total / drain, "p50": p50, "p95": p95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--scale-jobs",
        type=int,
        default=20_000,
        help="jobs drained by 1, then 4, worker processes (0: skip)",
    )
    args = parser.parse_args()

    try:
        import huey  # noqa: F401
    except ImportError:
        has_huey = False
    else:
        has_huey = True

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
        tj = trio.run(bench_trio_jobs, Path(folder), args.jobs, args.samples)
        rows.append(("trio_jobs SQLiteStorage", tj))
        if has_huey:
            for delay in HUEY_DELAYS:
                hy = trio.run(bench_huey, Path(folder), args.jobs, args.samples, delay)
                rows.append((f"huey SqliteHuey -d {delay}", hy))
        scale = {
            n: trio.run(bench_processes, Path(folder), args.scale_jobs, n)
            for n in ((1, 4) if args.scale_jobs else ())
        }

    print(
        f"\n{args.jobs} no-op jobs, one worker process with 10 slots;"
        f" latency over {args.samples} single jobs\n"
    )
    print(f"{'queue':<26}{'submit/s':>10}{'drain/s':>10}{'p50 ms':>9}{'p95 ms':>9}")
    for name, r in rows:
        print(
            f"{name:<26}{r['submit']:>10,.0f}{r['drain']:>10,.0f}"
            f"{r['p50'] * 1000:>9.1f}{r['p95'] * 1000:>9.1f}"
        )
    if has_huey:
        print()
        for name, hy in rows[1:]:
            print(
                f"trio_jobs / {name}: drain {tj['drain'] / hy['drain']:.2f}x,"
                f" submit {tj['submit'] / hy['submit']:.2f}x, p50 {tj['p50'] / hy['p50']:.2f}x"
            )
    else:
        print("\n(huey is not installed: pip install huey to compare)")
    if scale:
        print(
            f"\n{args.scale_jobs:,} jobs drained by 1 worker process: {scale[1]:,.0f} jobs/s;"
            f" by 4 together: {scale[4]:,.0f} jobs/s ({scale[4] / scale[1]:.2f}x)"
        )


if __name__ == "__main__":
    # Run as the module ``sqlite`` (this folder is sys.path[0]): the name the worker
    # processes import it by, so that huey's task names agree on both sides.
    import importlib

    importlib.import_module("sqlite").main()
