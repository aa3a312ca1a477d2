"""Raw SQLiteStorage throughput: submit, then drain through claim + settle.

No runner: this measures the store alone, the ceiling a runner on it can reach.
Wall time suffers from other load on a shared machine; CPU time (all threads of
this process) much less, so both are printed.

    python bench/sqlite_store.py [--jobs 5000]

Phases (each on a fresh file in a temporary directory):
- submit: N concurrent ``save()`` calls from 100 tasks (group-committed);
- drain/batch: one loop of ``claim(10)`` then 10 concurrent ``settle()``;
- drain/slots: 10 tasks, each looping ``claim(1)`` then ``settle()`` (how a runner
  with concurrency 10 that claims per free slot talks to the store).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_jobs import Job, JobStatus, SQLiteStorage


async def submit(store: SQLiteStorage, n: int, tasks: int = 100) -> None:
    jobs = [Job(id=uuid.uuid4().hex, type="noop", payload={"i": i}) for i in range(n)]

    async def saver(chunk: list[Job[Any]]) -> None:
        for job in chunk:
            await store.save(job)

    async with trio.open_nursery() as nursery:
        for k in range(tasks):
            nursery.start_soon(saver, jobs[k::tasks])


async def settle(store: SQLiteStorage, job: Job[Any], worker: str) -> None:
    assert await store.settle(
        job.id,
        worker_id=worker,
        attempt=job.attempts,
        status=JobStatus.COMPLETED,
        result=None,
        execution_time=0.0,
    )


async def drain_batch(store: SQLiteStorage, n: int) -> None:
    done = 0
    while jobs := await store.claim("w", 10):
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(settle, store, job, "w")
        done += len(jobs)
    assert done == n, done


async def drain_slots(store: SQLiteStorage, n: int, slots: int = 10) -> None:
    done = 0

    async def slot() -> None:
        nonlocal done
        while jobs := await store.claim("w", 1):
            await settle(store, jobs[0], "w")
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(slots):
            nursery.start_soon(slot)
    assert done == n, done


async def timed(what: str, n: int, fn: Callable[[], Awaitable[None]]) -> float:
    start, cpu_start = time.perf_counter(), time.process_time()
    await fn()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    print(
        f"{what:<12} {n:>6} jobs  wall {elapsed:6.3f} s {n / elapsed:>8,.0f} jobs/s"
        f"  cpu {cpu:6.3f} s {n / cpu:>8,.0f} jobs/cpu-s"
    )
    return n / elapsed


async def run(
    drain_name: str, drain: Callable[[SQLiteStorage, int], Awaitable[None]], n: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStorage(Path(tmp) / "bench.db") as store:
            await timed("submit", n, partial(submit, store, n))
            await timed(drain_name, n, partial(drain, store, n))
            stats = await store.get_stats()
            assert stats.completed == n, stats


async def main(n: int) -> None:
    print(f"SQLiteStorage, {n} no-op jobs")
    await run("drain/batch", drain_batch, n)
    await run("drain/slots", drain_slots, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    trio.run(main, parser.parse_args().jobs)
