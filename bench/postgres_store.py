"""Drain no-op jobs straight through PostgresStorage: claim(10) + settle, N tasks.

Measures the store alone (no runner): how many jobs per second one worker process
moves from PENDING to COMPLETED, and the client CPU it spends per job. For
context, the same run measures the ceiling the issue compares against: a raw
psycopg loop (one connection, no Trio) running the store's own claim statement,
10 jobs per statement, settling nothing. Each measurement uses a scratch schema.

    .venv/bin/python bench/postgres_store.py [--jobs 5000] [--tasks 10] [--dsn ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import trio

from trio_jobs import Job, JobStatus, PostgresStorage

DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@asynccontextmanager
async def scratch_store(args: argparse.Namespace) -> AsyncIterator[PostgresStorage]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStorage(
            args.dsn, schema=schema, max_connections=args.connections
        ) as store:
            yield store
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def fill(store: PostgresStorage, jobs: int) -> None:
    async def save(start: int) -> None:
        for i in range(start, jobs, 20):
            await store.save(Job(id=f"job-{i}", type="noop", payload={"i": i}))

    async with trio.open_nursery() as nursery:
        for start in range(20):
            nursery.start_soon(save, start)


async def drain(store: PostgresStorage, tasks: int, batch: int, concurrent_settle: bool) -> int:
    done = 0

    async def settle(job: Job[object], worker: str) -> None:
        nonlocal done
        applied = await store.settle(
            job.id,
            worker_id=worker,
            attempt=job.attempts,
            status=JobStatus.COMPLETED,
            result=None,
            execution_time=0.0,
        )
        assert applied
        done += 1

    async def worker(n: int) -> None:
        name = f"w{n}"
        while claimed := await store.claim(name, batch):
            if concurrent_settle:
                async with trio.open_nursery() as nursery:
                    for job in claimed:
                        nursery.start_soon(settle, job, name)
            else:
                for job in claimed:
                    await settle(job, name)

    async with trio.open_nursery() as nursery:
        for n in range(tasks):
            nursery.start_soon(worker, n)
    return done


async def drain_like_a_runner(store: PostgresStorage, concurrency: int, batch: int) -> int:
    """One worker id; one claimer keeps ``concurrency`` jobs in flight, as the runner does."""
    done = 0
    slots = trio.Semaphore(concurrency)

    async def run_job(job: Job[object]) -> None:
        nonlocal done
        try:
            applied = await store.settle(
                job.id, worker_id="w", attempt=job.attempts, status=JobStatus.COMPLETED
            )
            assert applied
            done += 1
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        while True:
            await slots.acquire()
            free = 1
            while free < batch and slots.value:
                await slots.acquire()
                free += 1
            claimed = await store.claim("w", free)
            for job in claimed:
                nursery.start_soon(run_job, job)
            for _ in range(free - len(claimed)):
                slots.release()
            if not claimed:
                break
    return done


def raw_claim_loop(dsn: str, statement: str, batch: int) -> int:
    claimed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        params = {"limit": batch, "worker_id": "raw", "lease": 30.0, "types": None, "token": None}
        while rows := conn.execute(statement, params).fetchall():
            claimed += len(rows)
    return claimed


async def run(args: argparse.Namespace) -> None:
    async with scratch_store(args) as store:
        await fill(store, args.jobs)
        start = time.perf_counter()
        claimed = await trio.to_thread.run_sync(
            raw_claim_loop, args.dsn, store._sql.claim, args.batch
        )
        elapsed = time.perf_counter() - start
    assert claimed == args.jobs
    print(
        f"ceiling: raw psycopg loop, claim({args.batch}) only, one connection: "
        f"{claimed / elapsed:,.0f} jobs/s"
    )
    for mode in ("one by one", "concurrently", "runner"):
        async with scratch_store(args) as store:
            start = time.perf_counter()
            await fill(store, args.jobs)
            if mode == "one by one":
                rate = args.jobs / (time.perf_counter() - start)
                print(f"store: 20 tasks saving at once: {rate:,.0f} jobs/s")
            start, cpu = time.perf_counter(), _cpu()
            if mode == "runner":
                done = await drain_like_a_runner(store, args.tasks, args.batch)
            else:
                done = await drain(store, args.tasks, args.batch, mode == "concurrently")
            elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
            stats = await store.get_stats()
        assert done == args.jobs == stats.completed, (done, stats)
        how = {
            "one by one": f"{args.tasks} tasks each claim({args.batch}), then settle one by one",
            "concurrently": f"{args.tasks} tasks each claim({args.batch}), then settle all at once",
            "runner": f"one claimer keeps {args.tasks} jobs in flight, each settles",
        }[mode]
        print(
            f"store: {how}: {done / elapsed:,.0f} jobs/s, client CPU {cpu / done * 1e6:.0f} us/job"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
