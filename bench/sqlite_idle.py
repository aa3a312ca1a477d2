"""Idle SQLite workers: what they cost, what others' commits make them do, how fast they wake.

Three measurements, each on a fresh file in a temporary directory, with real
``trio-jobs worker`` processes (defaults: ``poll_interval`` 1 s, logging at WARNING):

- **idle CPU**: one worker with nothing to do; its CPU time (user + system, every
  thread, read from ``/proc/<pid>/stat``) over ``--idle-seconds`` (20), after it
  settled for 2 s. As a percentage of one CPU.
- **foreign commits**: ``--workers`` (10) idle workers; this bench process commits
  ``--commits`` (100) jobs that no worker can run now (half of a type none of them
  handles, half delayed an hour), one commit each, 20 ms apart. Counted: the write
  transactions (``BEGIN IMMEDIATE``) the workers ran meanwhile, minus those they
  ran in a quiet window of the same length just before (their own heartbeats, if
  any), through a trace on their connections. What the commits *caused*.
- **trickle**: one idle worker; a :class:`JobClient` in this bench process (another
  process, as far as the worker can tell) submits single no-op jobs, ``--samples``
  (200) of them, 25-75 ms apart at random. Submit->start is the job's
  ``created_at`` -> ``started_at`` as the store recorded them; p50 and p95.

``--baseline-src DIR`` runs everything a second time with the trio_jobs found in
``DIR`` (e.g. a checkout of an older commit's ``src``), worker processes and client
alike, and prints both side by side. Linux only (``/proc``).

    python bench/sqlite_idle.py [--baseline-src ../old/src] [--idle-seconds 20]

This file is also the workers' APP (``trio-jobs worker sqlite_idle:HANDLERS``); with
``$BENCH_COUNT_DIR`` set, a worker process counts its write transactions into
``$BENCH_COUNT_DIR/<pid>``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import trio

BENCH_DIR = Path(__file__).resolve().parent
#: Jobs of this type are handled by the workers; ``other`` is handled by none.
TYPE = "noop"


# -- what the worker processes run --------------------------------------------------------


async def noop(job: Any, ctx: Any) -> None:
    await trio.lowlevel.checkpoint()


HANDLERS = {TYPE: noop}


def _count_write_transactions(folder: str) -> None:
    """Trace every connection this process opens; count BEGIN IMMEDIATE into a file."""
    out = Path(folder) / str(os.getpid())
    lock = threading.Lock()
    count = [0]
    out.write_text("0")
    original = sqlite3.connect

    def on_statement(sql: str) -> None:
        if sql.lstrip().upper().startswith("BEGIN IMMEDIATE"):
            with lock:
                count[0] += 1
                out.write_text(str(count[0]))

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = original(*args, **kwargs)
        conn.set_trace_callback(on_statement)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]


if os.environ.get("BENCH_COUNT_DIR") and __name__ != "__main__":
    _count_write_transactions(os.environ["BENCH_COUNT_DIR"])


# -- measuring (in a subprocess per variant) ------------------------------------------------


def _worker(db: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "trio_jobs", "worker", "sqlite_idle:HANDLERS", "--db", db,
         "--concurrency", "10", "--log-level", "WARNING"],
        cwd=BENCH_DIR,
        env=env,
    )  # fmt: skip


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_started(db: str, count: int) -> None:
    """Until ``count`` workers answered a job each (they are up and idle)."""
    from trio_jobs import JobClient, JobStatus, SQLiteStorage

    async with JobClient(SQLiteStorage(db)) as client:
        handles = [await client.submit(TYPE) for _ in range(count)]
        with trio.fail_after(120):
            for handle in handles:
                while (await client.get_job(handle.id)).status is not JobStatus.COMPLETED:  # type: ignore[union-attr]  # noqa: ASYNC110
                    await trio.sleep(0.05)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.environ.get("BENCH_SRC", ""), str(BENCH_DIR)] if p
    )
    env.update(extra)
    return env


def measure_idle_cpu(folder: Path, seconds: float) -> float:
    db = str(folder / "idle.db")
    (worker,) = workers = [_worker(db, _env())]
    try:
        trio.run(_wait_started, db, 1)
        time.sleep(2.0)
        start_cpu, start = _cpu_seconds(worker.pid), time.monotonic()
        time.sleep(seconds)
        cpu, elapsed = _cpu_seconds(worker.pid) - start_cpu, time.monotonic() - start
    finally:
        _stop(workers)
    return 100 * cpu / elapsed


def measure_foreign_commits(folder: Path, n_workers: int, commits: int) -> dict[str, int]:
    db = str(folder / "foreign.db")
    counts = folder / "counts"
    counts.mkdir()
    workers = [_worker(db, _env(BENCH_COUNT_DIR=str(counts))) for _ in range(n_workers)]
    gap = 0.02

    def total() -> int:
        return sum(int(p.read_text() or 0) for p in counts.iterdir())

    async def commit_all() -> None:
        from trio_jobs import Job, SQLiteStorage

        async with SQLiteStorage(db) as store:
            for i in range(commits):
                if i % 2:
                    await store.save(Job(id=uuid.uuid4().hex, type="other"))
                else:
                    await store.save(Job(id=uuid.uuid4().hex, type=TYPE), delay=3600)
                await trio.sleep(gap)

    try:
        trio.run(_wait_started, db, n_workers)
        time.sleep(2.0)
        window = commits * gap + 1.0
        before = total()
        time.sleep(window)
        quiet = total() - before
        before = total()
        trio.run(commit_all)
        time.sleep(1.0)  # let the last wake-ups land
        during = total() - before
    finally:
        _stop(workers)
    return {"quiet": quiet, "during": during, "caused": max(0, during - quiet)}


def measure_trickle(folder: Path, samples: int) -> dict[str, float]:
    db = str(folder / "trickle.db")
    workers = [_worker(db, _env())]

    async def trickle() -> list[float]:
        from trio_jobs import JobClient, JobStatus, SQLiteStorage

        latencies = []
        async with JobClient(SQLiteStorage(db)) as client:
            for _ in range(samples):
                await trio.sleep(random.uniform(0.025, 0.075))
                handle = await client.submit(TYPE)
                with trio.fail_after(60):
                    while True:
                        job = await client.get_job(handle.id)
                        if job is not None and job.status is JobStatus.COMPLETED:
                            break
                        await trio.sleep(0.002)
                assert job.started_at is not None
                latencies.append((job.started_at - job.created_at).total_seconds())
        return latencies

    try:
        trio.run(_wait_started, db, 1)
        latencies = trio.run(trickle)
    finally:
        _stop(workers)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94]}


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-idle-") as tmp:
        folder = Path(tmp)
        return {
            "cpu": measure_idle_cpu(folder, args.idle_seconds),
            "foreign": measure_foreign_commits(folder, args.workers, args.commits),
            "trickle": measure_trickle(folder, args.samples),
        }


# -- the table --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", help="another trio_jobs source tree to compare with")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--variant-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant_json:
        print(json.dumps(run_variant(args)))
        return

    variants = [("this tree", "")]
    if args.baseline_src:
        variants.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    results = []
    for name, src in variants:
        env = dict(os.environ, BENCH_SRC=src)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [src, str(BENCH_DIR)] if p)
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--variant-json",
             "--idle-seconds", str(args.idle_seconds), "--workers", str(args.workers),
             "--commits", str(args.commits), "--samples", str(args.samples)],
            env=env, check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        results.append((name, json.loads(out.stdout.strip().splitlines()[-1])))

    print(
        f"\nIdle SQLite workers (poll_interval 1 s): CPU of one over {args.idle_seconds:g} s;"
        f" write transactions of {args.workers} caused by {args.commits} commits that create"
        f" no claimable work;\nsubmit->start of {args.samples} single jobs 25-75 ms apart"
        " from a JobClient in another process\n"
    )
    print(
        f"{'code':<12}{'idle CPU %':>11}{'writes caused':>15}{'(quiet)':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}"
    )
    for name, r in results:
        print(
            f"{name:<12}{r['cpu']:>11.2f}{r['foreign']['caused']:>15}{r['foreign']['quiet']:>9}"
            f"{r['trickle']['p50'] * 1000:>9.2f}{r['trickle']['p95'] * 1000:>9.2f}"
        )
    print("\ntargets: idle CPU <= 0.3 %, 0 writes caused, p50 < 3 ms")


if __name__ == "__main__":
    # Run as the module ``sqlite_idle`` (this folder is sys.path[0]), the name the
    # worker processes import it by.
    import importlib

    importlib.import_module("sqlite_idle").main()
