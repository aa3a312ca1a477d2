"""Retention on PostgreSQL: trim 1,000,000 old completed jobs, timing every statement.

    .venv/bin/python bench/retention.py [--jobs 1000000] [--keep 10000] [--dsn DSN]

A scratch schema (dropped after) is migrated by a ``PostgresStorage``, then filled
through SQL (``INSERT ... SELECT FROM generate_series``) with ``--jobs`` completed
jobs finished 2 to 3 days ago, and ``--keep`` completed an hour ago (younger than
the retention age: they must survive). A ``JobRunner(retention={COMPLETED: 1 day})``
on that store then trims it: the runner's own retention task, with the store's
``purge_batch`` wrapped to time each call (client side: the thread hop and pool
checkout included, so an upper bound of the statement's time;
``pg_stat_statements`` is rarely preloaded). Every 100th batch is also run first
under ``EXPLAIN (ANALYZE, BUFFERS)`` in a transaction that is rolled back: the
server's own time and the pages it touched, as the table shrinks.

Before the run the plan of the purge statement is checked: the victims come from
the ``jobs_retention_idx`` index (``status, completed_at``) under a ``LIMIT``, and
no sequential scan of ``jobs`` appears. Target (issue 13): no statement over 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from typing import Any

import psycopg
import trio

from trio_jobs import JobRunner, JobStatus, PostgresStorage
from trio_jobs._periodic import RETENTION_BATCH
from trio_jobs.storage.postgres._batches import _EARLIEST, retention_key

DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AGE = 86400.0  # the retention age: one day
TARGET_MS = 100.0


def fill(dsn: str, schema: str, old: int, young: int) -> float:
    """Insert the jobs through SQL; return the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for label, count, ago in (("old", old, "2 days"), ("young", young, "1 hour")):
            for start in range(0, count, 200_000):
                stop = min(count, start + 200_000)
                conn.execute(
                    f"""
                    INSERT INTO "{schema}".jobs (id, type, payload, status, priority,
                        attempts, max_attempts, created_at, started_at, completed_at,
                        ready_at, result, execution_time, metadata)
                    SELECT '{label}-' || g, 'noop', '{{"i": ' || g || '}}', 'completed', 1,
                        1, 3, c - interval '1 second', c - interval '10 ms', c,
                        c - interval '1 second', 'null', 0.01, '{{}}'
                    FROM generate_series(%s::bigint, %s::bigint) AS g,
                        LATERAL (SELECT now() - interval '{ago}'
                                 - g * interval '86 ms' AS c) AS t
                    """,
                    (start, stop - 1),
                )
        conn.execute(f'VACUUM ANALYZE "{schema}".jobs')
    return time.perf_counter() - started


def purge_sql(store: PostgresStorage) -> str:
    return store._batch_sql("purge")


def purge_params(store: PostgresStorage, schema: str) -> dict[str, Any]:
    """The parameters the store's next retention batch will use (its floor included)."""
    status = JobStatus.COMPLETED.value
    return {
        "lock": retention_key(schema),
        "status": status,
        "age": AGE,
        "limit": RETENTION_BATCH,
        "floor": store._purge_floors.get(status, _EARLIEST),
    }


def plan_text(dsn: str, sql: str, params: dict[str, Any], analyze: bool) -> tuple[str, Any]:
    """The statement's plan (text), and with ``analyze`` its JSON; the delete is rolled back."""
    options = "ANALYZE, BUFFERS, " if analyze else ""
    with psycopg.connect(dsn) as conn:
        text = "\n".join(
            row[0] for row in conn.execute(f"EXPLAIN ({options}COSTS OFF) {sql}", params)
        )
        plan = None
        if analyze:
            plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
            plan = plan.fetchone()[0]  # type: ignore[index]
        conn.rollback()
    return text, plan


def table_pages(dsn: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_relation_size(%s) / 8192, pg_relation_size(%s) / 8192",
            (f'"{schema}".jobs', f'"{schema}".jobs_retention_idx'),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def count(dsn: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"""SELECT count(*) FILTER (WHERE id LIKE 'old-%%'),
                       count(*) FILTER (WHERE id LIKE 'young-%%')
                FROM "{schema}".jobs"""
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def trim(store: PostgresStorage, dsn: str, schema: str) -> dict[str, Any]:
    """Let a runner's retention task trim the table; time each purge_batch call."""
    durations: list[float] = []
    samples: list[tuple[int, float, int]] = []  # (batch, server ms, buffers)
    finished = trio.Event()
    purge_batch = store.purge_batch
    sql = purge_sql(store)

    async def timed(status: JobStatus, older_than: float, *, limit: int, holder: str) -> int | None:
        if len(durations) % 100 == 0 and not finished.is_set():
            params = purge_params(store, schema)
            _, plan = await trio.to_thread.run_sync(plan_text, dsn, sql, params, True)
            top = plan[0]
            buffers = top["Plan"].get("Shared Hit Blocks", 0) + top["Plan"].get(
                "Shared Read Blocks", 0
            )
            samples.append((len(durations), top["Execution Time"], buffers))
        started = time.perf_counter()
        deleted = await purge_batch(status, older_than, limit=limit, holder=holder)
        durations.append(time.perf_counter() - started)
        if deleted is not None and deleted < limit:
            finished.set()
        return deleted

    store.purge_batch = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    async with JobRunner(storage=store, retention={JobStatus.COMPLETED: AGE}) as runner:
        await finished.wait()
        elapsed = time.perf_counter() - started
        await runner.stop()
    return {"durations": durations, "samples": samples, "elapsed": elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--keep", type=int, default=10_000)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    schema = f"bench_retention_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStorage(args.dsn, schema=schema) as store:
            fill_s = await trio.to_thread.run_sync(fill, args.dsn, schema, args.jobs, args.keep)
            pages, index_pages = table_pages(args.dsn, schema)
            print(f"filled {args.jobs:,} old + {args.keep:,} young completed jobs: {fill_s:.1f} s")
            print(f"jobs: {pages:,} pages; jobs_retention_idx: {index_pages:,} pages\n")
            plan, _ = plan_text(args.dsn, purge_sql(store), purge_params(store, schema), False)
            print("plan of one retention batch:")
            print("  " + plan.replace("\n", "\n  "))
            uses_index = "jobs_retention_idx" in plan
            seq_scan = "Seq Scan on jobs" in plan
            print(f"\nvictims from jobs_retention_idx: {uses_index}; seq scan: {seq_scan}\n")
            result = await trim(store, args.dsn, schema)
        left_old, left_young = count(args.dsn, schema)
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    ms = [d * 1000 for d in result["durations"]]
    deleted = args.jobs - left_old
    print("server side, EXPLAIN (ANALYZE, BUFFERS) of every 100th batch (rolled back):")
    print(f"  {'batch':>6} {'ms':>7} {'buffer accesses':>16}")
    for batch, server_ms, buffers in result["samples"]:
        print(f"  {batch:>6} {server_ms:>7.1f} {buffers:>16,}")
    print()
    print(
        f"{'batches':>8} {'deleted':>10} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'max ms':>7} {'target':>8}"
    )
    print(
        f"{len(ms):>8,} {deleted:>10,} {deleted / result['elapsed']:>9,.0f}"
        f" {statistics.median(ms):>7.1f} {percentile(ms, 0.99):>7.1f} {max(ms):>7.1f}"
        f" {'<' + format(TARGET_MS, '.0f') + ' ms':>8}"
    )
    print(
        f"\nleft: {left_old:,} old (want 0), {left_young:,} young (want {args.keep:,});"
        f" max server-side sample {max(s[1] for s in result['samples']):.1f} ms"
    )
    print(json.dumps({"max_ms": max(ms), "p99_ms": percentile(ms, 0.99)}))


if __name__ == "__main__":
    trio.run(main)
