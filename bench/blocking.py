"""What BlockingJobClient.submit costs over JobClient.submit: one thread hop each way.

    python bench/blocking.py [--jobs 2000] [--repeat 3]

Each row submits ``--jobs`` jobs one call at a time and reports the best of
``--repeat`` runs, as microseconds per call and calls per second; "overhead" is
the difference from the same store's ``JobClient`` row of this run (the
baseline), i.e. the price of the hop into the client's Trio thread and back.
Rows:
- ``hop``: ``trio.from_thread.run`` of an empty async function: the hop alone;
- ``JobClient`` from a Trio task (the baseline) and ``BlockingJobClient`` from one
  plain thread, on a MemoryStorage (submit does almost nothing: the hop dominates)
  and on a SQLite file (a durable write per call);
- ``BlockingJobClient x8``: 8 plain threads submitting at once (SQLite), as a web
  server's request threads would: calls per second across all threads.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trio

from trio_jobs import BlockingJobClient, JobClient, JobStorage, MemoryStorage, SQLiteStorage


def best(repeat: int, run: Callable[[], float]) -> float:
    """The shortest of ``repeat`` timings (seconds): the least disturbed by other load."""
    return min(run() for _ in range(repeat))


def time_job_client(make_store: Callable[[], JobStorage], n: int) -> float:
    async def main() -> float:
        async with JobClient(make_store()) as client:
            start = time.perf_counter()
            for i in range(n):
                await client.submit("noop", {"i": i})
            return time.perf_counter() - start

    return trio.run(main)


def time_blocking(make_store: Callable[[], JobStorage], n: int, threads: int = 1) -> float:
    with BlockingJobClient(make_store()) as client:
        go = threading.Barrier(threads + 1)

        def producer(count: int) -> None:
            go.wait()
            for i in range(count):
                client.submit("noop", {"i": i})

        pool = [threading.Thread(target=producer, args=(n // threads,)) for _ in range(threads)]
        for thread in pool:
            thread.start()
        go.wait()
        start = time.perf_counter()
        for thread in pool:
            thread.join()
        return time.perf_counter() - start


def time_hop(n: int) -> float:
    with BlockingJobClient(MemoryStorage()) as client:

        async def nothing() -> None:
            await trio.lowlevel.checkpoint()

        token = client._token  # the bench measures the bare hop into the client's loop
        start = time.perf_counter()
        for _ in range(n):
            trio.from_thread.run(nothing, trio_token=token)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.jobs, args.repeat

    with tempfile.TemporaryDirectory() as folder:
        files = iter(range(10**6))

        def sqlite() -> JobStorage:
            return SQLiteStorage(Path(folder) / f"jobs-{next(files)}.db")

        rows: list[tuple[str, str, float, float | None]] = []
        rows.append(("hop (from_thread.run)", "-", best(repeat, lambda: time_hop(n)), None))
        for store_name, make in (("memory", MemoryStorage), ("sqlite", sqlite)):
            base = best(repeat, lambda make=make: time_job_client(make, n))  # type: ignore[misc]
            rows.append(("JobClient (Trio task)", store_name, base, None))
            blocking = best(repeat, lambda make=make: time_blocking(make, n))  # type: ignore[misc]
            rows.append(("BlockingJobClient (1 thread)", store_name, blocking, base))
        eight = best(repeat, lambda: time_blocking(sqlite, n, threads=8))
        rows.append(("BlockingJobClient (8 threads)", "sqlite", eight, None))

    print(f"{n} submits per row, best of {repeat}\n")
    print(f"{'row':<32} {'store':<7} {'us/call':>9} {'calls/s':>9} {'overhead':>10}")
    for name, store, seconds, baseline in rows:
        per_call = seconds / n * 1e6
        overhead = "" if baseline is None else f"+{(seconds - baseline) / n * 1e6:.0f} us"
        print(f"{name:<32} {store:<7} {per_call:>9.0f} {n / seconds:>9.0f} {overhead:>10}")


if __name__ == "__main__":
    main()
