"""Fair turns between tenants on PostgreSQL: who starts first, and what a claim costs.

One tenant with 100,000 pending jobs plus 100 tenants with 10 each; one worker
(in this process), concurrency 10, ``fair_tenants=True``. Reports the position of
each small tenant's first start (the promise: all within the first 200), the
share of starts under weights 2:1 while both tenants are backlogged, and the
claim's p50 with fair turns vs. the same backlog without any limit.

    python bench/fairness.py [--big 100000] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any

import trio

from trio_jobs import Job, JobTypeLimits, PostgresStorage

DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def fill(store: PostgresStorage, job_type: str, big: int) -> None:
    batch = 500
    for start in range(0, big, batch):
        async with trio.open_nursery() as nursery:
            for _ in range(min(batch, big - start)):
                job = Job(id=uuid.uuid4().hex, type=job_type, tenant_id="big")
                nursery.start_soon(store.save, job)
    for tenant in range(100):
        for _ in range(10):
            await store.save(Job(id=uuid.uuid4().hex, type=job_type, tenant_id=f"small{tenant}"))


async def claims(store: PostgresStorage, job_type: str, n: int) -> tuple[list[Any], list[float]]:
    """Claim ``n`` jobs, 10 at a time, completing each round (one worker, concurrency 10)."""
    order: list[Any] = []
    took: list[float] = []
    while len(order) < n:
        began = time.perf_counter()
        jobs = await store.claim("bench", 10, [job_type])
        took.append(time.perf_counter() - began)
        order += [job.tenant_id for job in jobs]
        for job in jobs:
            await store.settle(job.id, worker_id="bench", attempt=job.attempts, status="completed")  # type: ignore[arg-type]
    return order, took


async def main(big: int, dsn: str) -> None:
    schema = f"bench_fair_{uuid.uuid4().hex[:8]}"
    # The baseline: the same backlog in a schema of its own, no limits at all.
    async with PostgresStorage(dsn, schema=schema + "_plain") as plain:
        await fill(plain, "plain", big)
        _, plain_took = await claims(plain, "plain", 300)
    async with PostgresStorage(dsn, schema=schema) as store:
        await store.set_limits(JobTypeLimits("fair", fair_tenants=True))
        await fill(store, "fair", big)
        order, fair_took = await claims(store, "fair", 300)
        firsts = {t: order.index(t) + 1 for t in set(order) if t != "big"}
        print(
            f"small tenants started within first 200: {sum(p <= 200 for p in firsts.values())}/100"
        )
        print(f"last small tenant's first start: #{max(firsts.values()) if firsts else None}")
        fair_p50 = statistics.median(fair_took) * 1000
        plain_p50 = statistics.median(plain_took) * 1000
        print(
            f"claim p50: fair {fair_p50:.2f} ms, no limits {plain_p50:.2f} ms,"
            f" ratio {fair_p50 / plain_p50:.2f}"
        )
        await store.set_limits(JobTypeLimits("w", fair_tenants=True))
        await store.set_tenant_weight("heavy", 2.0)
        for _ in range(2000):
            await store.save(Job(id=uuid.uuid4().hex, type="w", tenant_id="heavy"))
            await store.save(Job(id=uuid.uuid4().hex, type="w", tenant_id="light"))
        order, _ = await claims(store, "w", 900)
        print(
            f"weights 2:1 -> starts {order.count('heavy')}:{order.count('light')}"
            f" = {order.count('heavy') / order.count('light'):.3f}"
        )
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.execute(f'DROP SCHEMA "{schema}_plain" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    trio.run(main, args.big, args.dsn)
