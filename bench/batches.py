"""submit_many against single submits, on SQLite and PostgreSQL.

    python bench/batches.py [--jobs 10000] [--single 2000] [--dsn DSN] [--stores sqlite,postgres]

For each store (a fresh file / a fresh schema): ``--single`` jobs submitted one
``submit`` call at a time from one task (the same-run baseline), then one
``submit_many`` of ``--jobs`` payloads, three times. Prints jobs/s and the ratio.
Targets (issue 13): submit_many >= 50,000 jobs/s on SQLite, >= 30,000 on
PostgreSQL, and >= 20x the single-submit rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from trio_jobs import JobClient, PostgresStorage, SQLiteStorage


async def measure(storage: Any, jobs: int, single: int) -> tuple[float, float]:
    async with JobClient(storage) as client:
        started = time.perf_counter()
        for i in range(single):
            await client.submit("noop", {"i": i})
        single_rate = single / (time.perf_counter() - started)
        best = 0.0
        for _ in range(3):
            payloads = [{"i": i} for i in range(jobs)]
            started = time.perf_counter()
            await client.submit_many("noop", payloads)
            best = max(best, jobs / (time.perf_counter() - started))
    return single_rate, best


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=2_000)
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
                rates = await measure(SQLiteStorage(Path(tmp) / "jobs.db"), args.jobs, args.single)
        else:
            schema = f"bench_batches_{uuid.uuid4().hex[:8]}"
            try:
                rates = await measure(
                    PostgresStorage(args.dsn, schema=schema), args.jobs, args.single
                )
            finally:
                drop_schema(args.dsn, schema)
        rows.append((kind, *rates))
    print(f"{'store':<10} {'submit (1 task)':>16} {'submit_many':>14} {'ratio':>7}")
    for kind, single, many in rows:
        print(f"{kind:<10} {single:>12,.0f}/s {many:>12,.0f}/s {many / single:>6.1f}x")


if __name__ == "__main__":
    trio.run(main)
