"""submit_many against single submits, on SQLite and PostgreSQL.

    python bench/batches.py [--jobs 10000] [--single 2000] [--rounds 5] [--dsn DSN]
                            [--stores sqlite,postgres]

For each store (a fresh file / a fresh schema), ``--rounds`` rounds of: ``--single``
jobs submitted one ``submit`` call at a time from one task (the same-run baseline),
then one ``submit_many`` of ``--jobs`` payloads. Prints the median jobs/s of each and
the median of the rounds' ratios.
Targets (issue 13): submit_many >= 50,000 jobs/s on SQLite, >= 30,000 on
PostgreSQL, and >= 20x the single-submit rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from trio_jobs import JobClient, PostgresStorage, SQLiteStorage


async def measure(storage: Any, jobs: int, single: int, rounds: int) -> tuple[float, float, float]:
    """Median single-submit rate, median submit_many rate, median ratio of one round's pair.

    Each round runs ``single`` submits then one ``submit_many`` back to back, so a
    round's ratio compares the two under the same machine conditions: on a VM the
    single submits' thread hand-offs cost 2-3x more when the machine is otherwise
    idle (its cores sleep between them) than when it is busy.
    """
    singles: list[float] = []
    batches: list[float] = []
    async with JobClient(storage) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            for i in range(single):
                await client.submit("noop", {"i": i})
            singles.append(single / (time.perf_counter() - started))
            payloads = [{"i": i} for i in range(jobs)]
            started = time.perf_counter()
            await client.submit_many("noop", payloads)
            batches.append(jobs / (time.perf_counter() - started))
    ratios = [many / one for one, many in zip(singles, batches, strict=True)]
    return statistics.median(singles), statistics.median(batches), statistics.median(ratios)


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for kind in args.stores.split(","):
        if kind == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                rates = await measure(
                    SQLiteStorage(Path(tmp) / "jobs.db"), args.jobs, args.single, args.rounds
                )
        else:
            schema = f"bench_batches_{uuid.uuid4().hex[:8]}"
            try:
                rates = await measure(
                    PostgresStorage(args.dsn, schema=schema), args.jobs, args.single, args.rounds
                )
            finally:
                drop_schema(args.dsn, schema)
        rows.append((kind, *rates))
    print(f"{'store':<10} {'submit (1 task)':>16} {'submit_many':>14} {'ratio':>7}")
    for kind, single, many, ratio in rows:
        print(f"{kind:<10} {single:>12,.0f}/s {many:>12,.0f}/s {ratio:>6.1f}x")
    print(f"(medians of {args.rounds} rounds; the ratio is the median of each round's own)")


if __name__ == "__main__":
    trio.run(main)
