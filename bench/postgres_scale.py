"""PostgreSQL store at rest and at scale: claims on a big table, and an idle worker's CPU.

Each measurement runs for this checkout's code and, with ``--baseline-src``, for
another checkout's (``PYTHONPATH`` pointed at its ``src``) in the same run, in
child processes, one after the other, each in a fresh schema that is dropped
afterwards. Against the PostgreSQL at ``$TRIO_JOBS_TEST_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).

- **claim**: ``claim(1)`` latency (p50, p95) as the caller sees it, over
  ``--claims`` claims of a ready NORMAL job, on a table holding only those ready
  jobs ("empty") and on one that also holds 100,000 final jobs and 50,000 jobs
  of HIGH priority delayed by an hour ("big"). The final rows are inserted in
  SQL, the delayed jobs saved through the store (``save(delay=3600)``), so each
  version writes them its own way. The table is ANALYZEd before measuring.
- **idle**: the CPU (user + system, from /proc) an idle ``trio-jobs worker``
  process uses over ``--seconds`` seconds, once it has run one job and settled
  for two seconds; and the CPU of its PostgreSQL backends meanwhile.

    python bench/postgres_scale.py [--baseline-src /work/wt-old/src] [--only claim,idle]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SRC = BENCH_DIR.parent / "src"
DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
FINAL_ROWS = 100_000
DELAYED_ROWS = 50_000
READY_ROWS_EXTRA = 50  # ready jobs beyond those claimed (warm-up claims take some)
WARMUP = 50
WORKER_APP_NAME = "bench-idle-worker"


# -- helpers --------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid``, NaN if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _child(src: str, *args: str) -> dict[str, Any]:
    """Run this script's ``args`` with ``src`` first on PYTHONPATH; its last line is JSON."""
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


# -- claim (child) --------------------------------------------------------------------------


async def _claim_child(dsn: str, big: bool, claims: int) -> dict[str, Any]:
    import psycopg
    import trio

    import trio_jobs
    from trio_jobs import Job, JobPriority, PostgresStorage

    schema = f"bench_claim_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStorage(dsn, schema=schema) as store:

            async def save_many(prefix: str, count: int, **options: Any) -> None:
                async def save(start: int) -> None:
                    for i in range(start, count, 50):
                        job = Job(id=f"{prefix}-{i}", type="t", priority=options["priority"])
                        await store.save(job, delay=options["delay"])

                async with trio.open_nursery() as nursery:
                    for start in range(50):
                        nursery.start_soon(save, start)

            await save_many("ready", claims + WARMUP + READY_ROWS_EXTRA,
                            priority=JobPriority.NORMAL, delay=0.0)  # fmt: skip
            if big:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        f'INSERT INTO "{schema}".jobs (id, type, payload, status, priority,'
                        " attempts, max_attempts, created_at, started_at, completed_at,"
                        " ready_at, result, execution_time)"
                        " SELECT 'final-' || i, 't', 'null', 'completed', 1, 1, 3, now(),"
                        " now(), now(), now(), 'null', 0.001"
                        f" FROM generate_series(1, {FINAL_ROWS}) AS i"
                    )
                await save_many("delayed", DELAYED_ROWS, priority=JobPriority.HIGH, delay=3600.0)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'VACUUM ANALYZE "{schema}".jobs')
            samples: list[float] = []
            for i in range(WARMUP + claims):
                start = time.perf_counter()
                jobs = await store.claim("bench", 1)
                elapsed = time.perf_counter() - start
                assert len(jobs) == 1, jobs
                assert jobs[0].id.startswith("ready-"), jobs
                if i >= WARMUP:
                    samples.append(elapsed)
    finally:
        _drop_schema(dsn, schema)
    return {
        "p50": statistics.median(samples),
        "p95": _percentile(samples, 95),
        "version": getattr(trio_jobs, "__file__", "?"),
    }


# -- idle (parent) --------------------------------------------------------------------------


def _idle(src: str, dsn: str, seconds: float) -> dict[str, Any]:
    """Start a worker with ``src`` on PYTHONPATH; measure its CPU once idle."""
    import psycopg

    sys.path.insert(0, str(BENCH_DIR))
    import _noop_app

    schema = f"bench_idle_{uuid.uuid4().hex[:8]}"
    worker_dsn = _noop_app.with_params(dsn, application_name=WORKER_APP_NAME)
    env = {**os.environ, "PYTHONPATH": src}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        marks = Path(tmp) / "marks"
        env["BENCH_MARKS"] = str(marks)
        argv = [sys.executable, "-m", "trio_jobs", "worker", "_noop_app:HANDLERS",
                "--dsn", worker_dsn, "--schema", schema, "--concurrency", "10",
                "--log-level", "WARNING"]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=BENCH_DIR, env=env, stderr=subprocess.PIPE)
        try:
            # Submitted with the worker's own code, in a child, once the schema exists.
            deadline = time.monotonic() + 60
            submitted = False
            while not marks.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {proc.stderr.read()[-2000:]!r}")  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise TimeoutError("the idle worker never ran its first job")
                if not submitted:
                    try:
                        _child(src, "_submit", "--dsn", dsn, "--schema", schema)
                        submitted = True
                    except RuntimeError:
                        pass  # the worker has not created the schema yet
                time.sleep(0.1)
            time.sleep(2.0)
            with psycopg.connect(dsn, autocommit=True) as conn:
                pids = [
                    pid
                    for (pid,) in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                        (WORKER_APP_NAME,),
                    ).fetchall()
                ]
            before = _proc_cpu(proc.pid), sum(_proc_cpu(pid) for pid in pids)
            time.sleep(seconds)
            after = _proc_cpu(proc.pid), sum(_proc_cpu(pid) for pid in pids)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _drop_schema(dsn, schema)
    return {
        "worker": (after[0] - before[0]) / seconds,
        "server": (after[1] - before[1]) / seconds,
        "backends": len(pids),
    }


async def _submit_child(dsn: str, schema: str) -> dict[str, Any]:
    from trio_jobs import JobClient, PostgresStorage

    store = PostgresStorage(dsn, schema=schema)
    if not await _schema_ready(dsn, schema):
        raise SystemExit(1)
    async with JobClient(store) as client:
        await client.submit("noop")
    return {}


async def _schema_ready(dsn: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".jobs',)).fetchone()
    return row is not None and row[0] is not None


# -- main -----------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--baseline-src", help="another checkout's src folder, measured too")
    parser.add_argument("--only", default="claim,idle")
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measurement")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",")}
    variants = [("this checkout", str(SRC))]
    if args.baseline_src:
        variants.insert(0, ("baseline", str(Path(args.baseline_src).resolve())))
    load_before = os.getloadavg()

    claim_rows: list[tuple[str, int, dict[str, Any], dict[str, Any]]] = []
    idle_rows: list[tuple[str, int, dict[str, Any]]] = []
    for round_ in range(args.rounds):
        for name, src in variants:
            if "claim" in only:
                print(f"... claim, {name}, round {round_ + 1}", file=sys.stderr, flush=True)
                common = ["--dsn", args.dsn, "--claims", str(args.claims)]
                empty = _child(src, "_claim", *common)
                big = _child(src, "_claim", *common, "--big")
                claim_rows.append((name, round_ + 1, empty, big))
            if "idle" in only:
                print(f"... idle, {name}, round {round_ + 1}", file=sys.stderr, flush=True)
                idle_rows.append((name, round_ + 1, _idle(src, args.dsn, args.seconds)))
    load_after = os.getloadavg()

    print(
        f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
        f" ({os.cpu_count()} CPUs)"
    )
    if claim_rows:
        print(
            f"\nclaim(1) as the caller sees it, {args.claims} claims; big = + {FINAL_ROWS:,}"
            f" final + {DELAYED_ROWS:,} delayed HIGH jobs (target: big p50 <= 1.5x empty)\n"
        )
        header = (
            f"{'code':<16}{'round':>6}{'empty p50':>11}{'p95':>8}{'big p50':>10}{'p95':>8}"
            f"{'big/empty':>11}"
        )
        print(header)
        print("-" * len(header))
        for name, round_, empty, big in claim_rows:
            print(
                f"{name:<16}{round_:>6}{_ms(empty['p50']):>11}{_ms(empty['p95']):>8}"
                f"{_ms(big['p50']):>10}{_ms(big['p95']):>8}{big['p50'] / empty['p50']:>10.2f}x"
            )
        print("(milliseconds)")
    if idle_rows:
        print(
            f"\nan idle worker over {args.seconds:g} s, CPU as % of one core"
            " (target: worker <= 0.3 %)\n"
        )
        header = f"{'code':<16}{'round':>6}{'worker %':>10}{'its backends %':>16}"
        print(header)
        print("-" * len(header))
        for name, round_, idle in idle_rows:
            print(
                f"{name:<16}{round_:>6}{idle['worker'] * 100:>10.2f}"
                f"{idle['server'] * 100:>16.2f}   ({idle['backends']} backends)"
            )


def _child_main() -> None:
    import trio

    command = sys.argv[1]
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--schema")
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--big", action="store_true")
    args = parser.parse_args()
    if command == "_claim":
        result = trio.run(_claim_child, args.dsn, args.big, args.claims)
    else:
        result = trio.run(_submit_child, args.dsn, args.schema)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _child_main()
    else:
        main()
