"""SQLiteStorage ``claim(1)``, empty table vs big one: does a claim slow as the table fills?

Two files, measured in one run:

- **empty**: only the ready jobs being claimed;
- **big**: the same ready jobs (NORMAL priority), plus ``--final`` (100,000)
  completed jobs and ``--delayed`` (50,000) HIGH-priority jobs delayed an hour:
  higher-priority jobs that are not due yet, the ones a claim must not walk past.

Each claims ``--claims`` (2,000) ready jobs one ``claim(1)`` at a time through the
store (thread hop, transaction and all), timing each call; p50 and p95, and the
big table's p50 as a multiple of the empty one's (target: within 1.5x). The big
table is filled with plain SQL (a store's ``save`` would take minutes).

``--baseline-src DIR`` runs the same in a subprocess with the trio_jobs found in
``DIR`` (e.g. a checkout of an older commit's ``src``) and prints both.

    python bench/sqlite_claims.py [--baseline-src ../old/src] [--claims 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from trio_jobs import Job, SQLiteStorage

TYPE = "noop"
_COLUMNS = "id, type, payload, status, priority, attempts, max_attempts, created_at, run_at,"
_COLUMNS += " completed_at, metadata"


def _fill(path: Path, *, final: int, delayed: int) -> None:
    """Add final and delayed HIGH jobs to the (already created) table with plain SQL."""
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO jobs ({_COLUMNS})"
            " VALUES (?, ?, 'null', 'completed', 1, 1, 3, ?, ?, ?, '{}')",
            ((uuid.uuid4().hex, TYPE, now, now, now) for _ in range(final)),
        )
        conn.executemany(
            f"INSERT INTO jobs ({_COLUMNS})"
            " VALUES (?, ?, 'null', 'pending', 2, 0, 3, ?, ?, NULL, '{}')",
            ((uuid.uuid4().hex, TYPE, now, now + 3600) for _ in range(delayed)),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _measure(path: Path, claims: int, final: int, delayed: int) -> list[float]:
    async with SQLiteStorage(path) as store:
        pass  # creates the tables
    if final or delayed:
        _fill(path, final=final, delayed=delayed)
    async with SQLiteStorage(path) as store:
        async with trio.open_nursery() as nursery:
            for _ in range(claims):
                nursery.start_soon(store.save, Job(id=uuid.uuid4().hex, type=TYPE))
        timings = []
        for _ in range(claims):
            start = time.perf_counter()
            (job,) = await store.claim("bench", 1, [TYPE])
            timings.append(time.perf_counter() - start)
            assert job.priority == 1, job
    return timings


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-claims-") as tmp:
        for name, final, delayed in (("empty", 0, 0), ("big", args.final, args.delayed)):
            timings = trio.run(_measure, Path(tmp) / f"{name}.db", args.claims, final, delayed)
            cuts = statistics.quantiles(timings, n=100, method="inclusive")
            out[name] = {"p50": cuts[49], "p95": cuts[94]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", help="another trio_jobs source tree to compare with")
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--final", type=int, default=100_000)
    parser.add_argument("--delayed", type=int, default=50_000)
    parser.add_argument("--variant-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant_json:
        print(json.dumps(run_variant(args)))
        return

    variants = [("this tree", None)]
    if args.baseline_src:
        variants.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    results = []
    for name, src in variants:
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        out = subprocess.run(
            [sys.executable, __file__, "--variant-json", "--claims", str(args.claims),
             "--final", str(args.final), "--delayed", str(args.delayed)],
            env=env, check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        results.append((name, json.loads(out.stdout.strip().splitlines()[-1])))

    print(
        f"\nclaim(1) of {args.claims} ready NORMAL jobs, one at a time; big = plus"
        f" {args.final:,} completed and {args.delayed:,} HIGH jobs delayed an hour\n"
    )
    print(f"{'code':<12}{'empty p50':>11}{'p95':>8}{'big p50':>10}{'p95':>8}{'big/empty':>11}")
    for name, r in results:
        e, b = r["empty"], r["big"]
        print(
            f"{name:<12}{e['p50'] * 1e3:>9.3f}ms{e['p95'] * 1e3:>6.2f}ms"
            f"{b['p50'] * 1e3:>8.3f}ms{b['p95'] * 1e3:>6.2f}ms{b['p50'] / e['p50']:>10.2f}x"
        )
    print("\ntarget: big/empty p50 within 1.5x")


if __name__ == "__main__":
    main()
