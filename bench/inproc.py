"""In-process throughput: 20,000 no-op jobs through JobRunner vs a raw Trio baseline.

The baseline is the least any Trio runner must do per job: take a token from a
CapacityLimiter(10), start a task that runs the job in its own CancelScope, store
the result, and give the token back. The peer is aiojobs on asyncio, doing the
same (a Scheduler with limit=10; each job in ``asyncio.timeout``, its result
stored), when it is installed (``nox -s bench`` installs it; it is never a
dependency of trio_jobs). asyncio's tasks are written in C: raw Trio itself runs
slower than aiojobs here, so the peer row says what an asyncio user gives up or
gains, not a bar for the Trio code. All are measured in the same
process, alternating, and the table reports the median of the rounds.

Times are CPU seconds of this process (``time.process_time``): both runs are pure
CPU work in one thread, and CPU time is far less disturbed than wall time by other
load on a shared machine.

Also reports the memory held per queued-but-not-started job, with 100,000 queued.

Run: ``python bench/inproc.py [--jobs N] [--rounds N]`` (or ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc

import trio

from trio_jobs import JobRunner


async def noop(job: object, ctx: object) -> None:
    return None


async def asyncio_noop() -> None:
    return None


async def raw_trio(n: int) -> float:
    limiter = trio.CapacityLimiter(10)
    results: dict[int, object] = {}

    async def run(i: int) -> None:
        try:
            with trio.CancelScope(deadline=trio.current_time() + 300):
                results[i] = await noop(i, None)
        finally:
            limiter.release_on_behalf_of(i)

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await limiter.acquire_on_behalf_of(i)
            nursery.start_soon(run, i)
    elapsed = time.process_time() - start
    assert len(results) == n
    return elapsed


async def aiojobs_scheduler(n: int) -> float | None:
    try:
        import aiojobs
    except ImportError:
        return None

    results: dict[int, object] = {}

    async def job(i: int) -> None:
        # Like the baseline: a deadline per job, the result stored.
        async with asyncio.timeout(300):
            results[i] = await asyncio_noop()

    start = time.process_time()
    scheduler = aiojobs.Scheduler(limit=10, pending_limit=n)
    spawned = [await scheduler.spawn(job(i)) for i in range(n)]
    for j in spawned:
        await j.wait()
    await scheduler.close()
    elapsed = time.process_time() - start
    assert len(results) == n
    return elapsed


async def trio_jobs_runner(n: int) -> float:
    start = time.process_time()
    async with JobRunner(concurrency=10) as runner:
        runner.register_handler("noop", noop)
        for _ in range(n):
            await runner.submit("noop")
    elapsed = time.process_time() - start
    stats = await runner.stats()
    assert stats.completed == n, stats
    return elapsed


async def queued_memory(n: int) -> float:
    """Bytes per job held by a runner with ``n`` jobs queued and none started."""
    gc.collect()
    tracemalloc.start()
    runner = JobRunner(concurrency=1)
    runner.register_handler("noop", noop)
    async with runner:
        await runner.stop()  # nothing starts; the runner is still a live store front
    # Submitting needs a running runner: go through its store directly.
    store = runner.storage
    before = tracemalloc.get_traced_memory()[0]
    from trio_jobs import RetryConfig
    from trio_jobs._submit import build_job

    default = RetryConfig()
    for i in range(n):
        job = build_job(
            "noop",
            {"i": i},
            priority=1,
            retry=None,
            timeout=None,
            delay=0.0,
            metadata=None,
            tenant_id=None,
            default_retry=default,
            default_timeout=300.0,
        )
        await store.save(job)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()

    raw: list[float] = []
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(args.rounds):
        raw.append(trio.run(raw_trio, args.jobs))
        ours.append(trio.run(trio_jobs_runner, args.jobs))
        aio = asyncio.run(aiojobs_scheduler(args.jobs))
        if aio is not None:
            peer.append(aio)
    raw_rate = args.jobs / statistics.median(raw)
    our_rate = args.jobs / statistics.median(ours)
    print(f"{args.jobs:,} no-op jobs, concurrency 10, median of {args.rounds} rounds")
    print(f"{'':24}{'jobs/s':>12}{'µs/job':>10}{'vs raw':>9}")
    rows = [("raw Trio baseline", raw_rate), ("trio_jobs JobRunner", our_rate)]
    if peer:
        rows.append(("aiojobs (asyncio)", args.jobs / statistics.median(peer)))
    for name, rate in rows:
        print(f"{name:24}{rate:>12,.0f}{1e6 / rate:>10.1f}{rate / raw_rate:>8.2f}x")
    if peer:
        print(f"trio_jobs vs aiojobs: {our_rate / rows[2][1]:.2f}x")
    per_job = trio.run(queued_memory, args.queued)
    print(f"memory per queued job ({args.queued:,} queued): {per_job:,.0f} bytes")


if __name__ == "__main__":
    main()
