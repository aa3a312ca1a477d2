"""The dashboard on a big PostgreSQL table: overview and jobs pages, end to end.

A fresh schema gets ``--jobs`` jobs (default 1,000,000) inserted with
``generate_series``: 94 % completed over the last week, 3 % failed, 1 %
cancelled, 1.5 % pending, 0.3 % retrying, 0.2 % running; 8 job types; a tenant
on 30 % of them. After ``VACUUM ANALYZE`` (autovacuum's job on a live table),
the app is served with Hypercorn in-process and each page is fetched over HTTP
``--rounds`` times after a warm-up: the figures are the request latencies seen
by the client (p50, p95, max), so they include the queries, the rendering and
the HTTP round trip. Targets: overview < 100 ms, a jobs page < 50 ms.

Against the PostgreSQL at ``$TRIO_JOBS_TEST_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the schema is dropped afterwards.

    python bench/dashboard.py [--jobs 1000000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from functools import partial
from typing import Any

import httpx
import trio

from trio_jobs import PostgresStorage
from trio_jobs.dashboard import create_app, serve

DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")

POPULATE = """
INSERT INTO "{schema}".jobs (id, type, payload, status, priority, attempts, max_attempts,
    created_at, started_at, completed_at, ready_at, execution_time, last_error, result,
    tenant_id, metadata)
SELECT
    'job-' || lpad(g::text, 8, '0'),
    'type-' || (g % 8),
    '{{"n": ' || g || ', "to": "user' || g || '@example.com"}}',
    s.status,
    1,
    CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
    3,
    t.created,
    CASE WHEN s.status <> 'pending' THEN t.created + interval '1 second' END,
    CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
         THEN t.created + interval '2 seconds' END,
    t.created,
    CASE WHEN s.status = 'completed' THEN 0.5 END,
    CASE WHEN s.status IN ('failed', 'retrying') THEN
        '{{"message": "boom", "type": "ValueError", "traceback": null, "attempt": 1,'
        ' "timestamp": "2026-01-01T00:00:00+00:00", "retryable": false}}' END,
    CASE WHEN s.status = 'completed' THEN '"ok"' ELSE 'null' END,
    CASE WHEN g % 10 < 3 THEN 'tenant-' || (g % 50) END,
    '{{}}'
FROM generate_series(1, {n}) AS g,
LATERAL (SELECT CASE
    WHEN g % 1000 < 940 THEN 'completed'
    WHEN g % 1000 < 970 THEN 'failed'
    WHEN g % 1000 < 980 THEN 'cancelled'
    WHEN g % 1000 < 995 THEN 'pending'
    WHEN g % 1000 < 998 THEN 'retrying'
    ELSE 'running' END AS status) AS s,
LATERAL (SELECT now() - ({n} - g) * (interval '7 days' / {n}) AS created) AS t
"""


def populate(schema: str, n: int) -> float:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(POPULATE.format(schema=schema, n=n))  # type: ignore[arg-type]
        conn.execute(f'VACUUM ANALYZE "{schema}".jobs')  # type: ignore[arg-type]
    return time.perf_counter() - started


def drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


async def measure(client: httpx.AsyncClient, url: str, rounds: int) -> list[float]:
    for _ in range(3):  # warm-up: connections, statement caches, templates
        (await client.get(url)).raise_for_status()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


async def run(args: argparse.Namespace) -> None:
    schema = f"bench_dash_{uuid.uuid4().hex[:8]}"
    storage = PostgresStorage(DSN, schema=schema)
    try:
        async with storage:
            seconds = await trio.to_thread.run_sync(populate, schema, args.jobs)
            print(f"populated {args.jobs:,} jobs in {seconds:.1f} s (with VACUUM ANALYZE)")
            app = create_app(storage)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(serve, app, host="127.0.0.1", port=0))
                base = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                    first = (await client.get("/jobs", params={"type": "type-3"})).text
                    cursor = first.split("cursor=")[1].split("&")[0].split('"')[0]
                    pages: list[tuple[str, str, float]] = [
                        ("overview", "/", 100),
                        ("jobs, newest", "/jobs", 50),
                        ("jobs, status=failed", "/jobs?status=failed", 50),
                        ("jobs, status=pending", "/jobs?status=pending", 50),
                        ("jobs, type=type-3", "/jobs?type=type-3", 50),
                        ("jobs, type, page 2", f"/jobs?type=type-3&cursor={cursor}", 50),
                        ("jobs, tenant=tenant-7", "/jobs?tenant=tenant-7", 50),
                        ("jobs, deep cursor", "/jobs?cursor=500000", 50),
                        ("job page", "/jobs/job-00500000", 50),
                        ("metrics", "/metrics", 100),
                    ]
                    print(f"{'page':<24} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  target")
                    for name, url, target in pages:
                        times = await measure(client, url, args.rounds)
                        p50 = statistics.median(times)
                        p95 = statistics.quantiles(times, n=20)[18]
                        verdict = "ok" if p95 < target else "SLOW"
                        print(
                            f"{name:<24} {p50:8.1f} {p95:8.1f} {max(times):8.1f}"
                            f"  < {target:.0f} ms (p95) {verdict}"
                        )
                nursery.cancel_scope.cancel()
            summary = await storage.summarize()
            print("estimated statuses:", sorted(s.value for s in summary.estimated))
    finally:
        await trio.to_thread.run_sync(drop, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args: Any = parser.parse_args()
    trio.run(run, args)


if __name__ == "__main__":
    main()
