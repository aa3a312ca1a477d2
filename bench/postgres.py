"""Many machines' queue: trio_jobs on PostgreSQL vs procrastinate and saq, in one run.

Against the PostgreSQL at ``$TRIO_JOBS_TEST_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each system in a fresh schema
that is dropped afterwards:

- **drain**: N no-op jobs are submitted first (20 concurrent producers in this
  process, one job per call), then ONE worker process with 10 concurrent slots
  runs them all:

  - trio_jobs: ``python -m trio_jobs worker _noop_app:HANDLERS --dsn ... --schema ...
    --concurrency 10 --log-level WARNING`` (INFO logs two lines per job);
  - procrastinate: its psycopg connector, ``procrastinate worker --concurrency=10``;
  - saq: ``saq.Queue.from_url("postgresql://...")`` (its PostgresQueue), a worker
    with ``concurrency`` 10.

  The tables are ANALYZEd once filled (as autovacuum would have, in steady
  state). The drain's clock runs from the worker's first job start (the handler
  writes ``time.time()``, so interpreter start-up and imports are not counted)
  to the last completion the store recorded (trio_jobs: ``max(completed_at)``;
  procrastinate: its last ``succeeded`` event; saq: the jobs' ``completed``),
  once a poll of the store every 50 ms sees all N completed (trio_jobs:
  ``stats()``; the peers: a count of their finished rows). ``wall/s`` counts
  from spawning the worker process instead. CPU per job is read from /proc for
  the worker process and for its PostgreSQL backends (the sessions named
  ``bench-worker``), between the first start and the poll that saw the end.
- **ceiling**: a raw psycopg loop on one connection, on its own table, claiming
  10 jobs per statement (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
  LOCKED LIMIT 10) RETURNING``) and completing them with a second statement.
- **latency**: then, to the same (now idle) worker, single jobs trickled one at a
  time, a few ms apart: submit->start is from ``time.time()`` taken just before
  submit is called to ``time.time()`` on the handler's first line. p50 and p95.
- **idle latency**: then single jobs 25-75 ms apart (uniformly random gaps), so
  the worker is idle when each arrives: submit->start as above, p50 and p95.
- **fleet** (trio_jobs only): ``--fleet-jobs`` no-op jobs (default 20,000) drained
  by one worker process, then the same number, in a fresh schema, by
  ``--fleet-workers`` processes (default 4) together, each with 10 slots: the
  rate from the first start in any process to the last completion.

procrastinate and saq run only when importable; they are never dependencies of
trio_jobs (``nox -s bench`` installs them into the bench session's venv), and a
missing one is reported as "not installed".

    python bench/postgres.py [--jobs 5000] [--samples 200] [--only trio_jobs,raw]
        [--fleet-jobs 20000] [--fleet-workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import random
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import trio

from trio_jobs import JobClient, PostgresStorage

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import _noop_app  # noqa: E402 - the workers' module, beside this file

DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SYSTEMS = ("trio_jobs", "procrastinate", "saq", "raw")
PRODUCERS = 20
POLL = 0.050  # seconds between polls of the store while draining (each poll costs it CPU)
DRAIN_LIMIT = 300.0  # seconds a drain may take before the run gives up
SAMPLE_LIMIT = 10.0  # seconds one trickled job may take to start
STOP_LIMIT = 15.0  # seconds a worker gets to stop after SIGTERM before SIGKILL


@dataclass
class Result:
    """One row of the table."""

    system: str
    rate: float | None = None  # jobs/s, first start -> all completed
    wall: float | None = None  # jobs/s, worker spawned -> all completed
    submit: float | None = None  # jobs/s submitted by PRODUCERS concurrent producers
    p50: float | None = None  # seconds
    p95: float | None = None
    idle_p50: float | None = None  # seconds, single jobs 25-75 ms apart
    idle_p95: float | None = None
    worker_cpu: float | None = None  # CPU seconds per job: the worker process
    pg_cpu: float | None = None  # CPU seconds per job: its PostgreSQL backends
    note: str = ""


# -- helpers --------------------------------------------------------------------------------


def _schema(system: str) -> str:
    return f"bench_{system}_{uuid.uuid4().hex[:8]}"


def _drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _create_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')


def _analyze(dsn: str, schema: str) -> None:
    """ANALYZE the schema's tables: the planner sees a filled queue, as in steady state.

    Right after 5,000 inserts autovacuum has not analyzed a fresh table yet, and
    plans made for an empty one can scan it whole on every claim.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'ANALYZE "{schema}"."{table}"')


def _query_float(dsn: str, schema: str, statement: str) -> float:
    """Run a one-value query with ``schema`` first on the search_path."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (f'"{schema}"',))
        row = conn.execute(statement).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError(f"no answer to {statement!r}")
    return float(row[0])


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


class Worker:
    """A worker subprocess in ``bench/``, its stderr in a log file; stopped on exit."""

    def __init__(self, name: str, argv: list[str], log: Path, **env: str) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0

    def __enter__(self) -> Worker:
        with open(self.log, "wb") as out:
            self.spawned = time.time()
            self.proc = subprocess.Popen(
                self.argv, cwd=BENCH_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def check_alive(self) -> None:
        """Raise if the worker exited, with the end of its log."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} worker exited {self.proc.returncode}:\n{tail}")


def _proc_cpu(stat: Path) -> float:
    """Return the CPU seconds (user + system) in a /proc/PID/stat file, NaN if unreadable."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return float("nan")


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


WORKER_APP_NAME = "bench-worker"  # application_name of the worker's connections


class CpuMeter:
    """CPU seconds of the worker process and of its PostgreSQL backends, from /proc.

    The backends are the sessions whose application_name is WORKER_APP_NAME (the
    worker's DSN sets it); the server runs on this machine. Where /proc cannot be
    read (not Linux, a remote server) the figures are left out.
    """

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.start: dict[int, float] | None = None
        self.end: dict[int, float] | None = None
        self.worker_pid = 0

    def close(self) -> None:
        self.conn.close()

    def snapshot(self) -> dict[int, float]:
        """Return {pid: CPU seconds} for the worker (key 0) and each of its backends."""
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (WORKER_APP_NAME,)
        ).fetchall()
        cpu = {pid: _proc_cpu(Path(f"/proc/{pid}/stat")) for (pid,) in rows}
        cpu[0] = _proc_cpu(Path(f"/proc/{self.worker_pid}/stat"))
        return cpu

    def per_job(self, total: int) -> tuple[float | None, float | None]:
        """Return (worker, PostgreSQL) CPU seconds per job between the two snapshots."""
        if self.start is None or self.end is None:
            return None, None
        worker = self.end[0] - self.start[0]
        server = sum(v - self.start.get(pid, 0.0) for pid, v in self.end.items() if pid)
        return _nan_none(worker / total), _nan_none(server / total)


async def _poll(
    check: Callable[[], Awaitable[bool]],
    sleep: Callable[[float], Awaitable[Any]],
    interval: float,
    limit: float,
    worker: Worker,
    what: str,
    meter: CpuMeter | None = None,
    marks: Path | None = None,
) -> float:
    """Await ``check()`` every ``interval`` until true; return ``time.time()`` then.

    With a ``meter``, CPU is snapshotted when the ``marks`` file appears (the
    first job started) and again when ``check()`` is true.
    """
    deadline = time.monotonic() + limit
    while True:
        if meter and marks and meter.start is None and _exists(marks):
            meter.start = meter.snapshot()
        if await check():
            break
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {limit} s")
        await sleep(interval)
    done = time.time()
    if meter:
        meter.end = meter.snapshot()
    return done


def _exists(path: Path) -> bool:
    return path.exists()


def _fresh(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _read_marks(path: Path) -> float:
    return float(path.read_text())


def _read_latencies(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()]


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def _trickle(
    submit: Callable[[float], Awaitable[Any]],
    sleep: Callable[[float], Awaitable[Any]],
    samples: int,
    latency_file: Path,
    worker: Worker,
) -> tuple[float, float]:
    """Submit ``samples`` single jobs, each once the previous one started; p50, p95."""
    for i in range(samples):
        await sleep(random.uniform(0.005, 0.020))
        await submit(time.time())

        async def started(count: int = i + 1) -> bool:
            return _count_lines(latency_file) >= count

        await _poll(started, sleep, 0.002, SAMPLE_LIMIT, worker, f"latency job {i}")
    return _percentiles(_read_latencies(latency_file))


async def _trickle_gaps(
    submit: Callable[[float], Awaitable[Any]],
    sleep: Callable[[float], Awaitable[Any]],
    samples: int,
    latency_file: Path,
    worker: Worker,
) -> tuple[float, float]:
    """Submit ``samples`` single jobs 25-75 ms apart (random gaps); p50, p95 of their start.

    The gaps are long enough for the worker to be idle when each job arrives;
    the jobs are not waited for one by one.
    """
    _fresh(latency_file)
    for _ in range(samples):
        await sleep(random.uniform(0.025, 0.075))
        await submit(time.time())

    async def started() -> bool:
        return _count_lines(latency_file) >= samples

    await _poll(started, sleep, 0.05, SAMPLE_LIMIT, worker, "idle latency jobs")
    return _percentiles(_read_latencies(latency_file))


@dataclass
class Run:
    """One system's drain and trickle: how to start its worker and watch its store."""

    name: str
    schema: str
    argv: list[str]
    env: dict[str, str]
    drained: Callable[[], Awaitable[bool]]  # all jobs completed?
    last_completion: str  # SQL: the epoch of the last completion the store recorded
    submit_latency: Callable[[float], Awaitable[Any]]  # enqueue one latency job, given t0
    sleep: Callable[[float], Awaitable[Any]]  # trio.sleep or asyncio.sleep


async def _drain_and_trickle(
    run: Run, dsn: str, total: int, submitted_in: float, samples: int, folder: Path
) -> Result:
    """Start ``run``'s worker on the filled queue, time the drain, then the trickle."""
    marks, lat = folder / f"{run.name}.marks", folder / f"{run.name}.latency"
    _fresh(marks, lat)
    _analyze(dsn, run.schema)
    meter = CpuMeter(dsn)
    env = {**run.env, "BENCH_MARKS": str(marks), "BENCH_LATENCY": str(lat)}
    try:
        with Worker(run.name, run.argv, folder / f"{run.name}.log", **env) as worker:
            assert worker.proc is not None
            meter.worker_pid = worker.proc.pid
            done = await _poll(
                run.drained, run.sleep, POLL, DRAIN_LIMIT, worker, "drain", meter, marks
            )
            first = _read_marks(marks)
            last = _query_float(dsn, run.schema, run.last_completion)
            if not first <= last <= done:
                raise RuntimeError(f"{run.name}: first start {first}, last completion {last},"
                                   f" seen done at {done}: clocks disagree")  # fmt: skip
            result = Result(
                run.name,
                rate=total / (last - first),
                wall=total / (last - worker.spawned),
                submit=total / submitted_in,
            )
            result.worker_cpu, result.pg_cpu = meter.per_job(total)
            result.p50, result.p95 = await _trickle(
                run.submit_latency, run.sleep, samples, lat, worker
            )
            result.idle_p50, result.idle_p95 = await _trickle_gaps(
                run.submit_latency, run.sleep, samples, lat, worker
            )
    finally:
        meter.close()
    return result


# -- trio_jobs ------------------------------------------------------------------------------


async def bench_trio_jobs(dsn: str, total: int, samples: int, folder: Path) -> Result:
    schema = _schema("trio_jobs")
    try:
        async with JobClient(PostgresStorage(dsn, schema=schema)) as client:
            submitted_in = await _fill(client, total)

            # For profiling: $BENCH_WORKER_PYTHON_ARGS goes before "-m trio_jobs" (e.g.
            # "-m pyinstrument -r text -o prof.txt"); $BENCH_TRIO_JOBS_APP replaces the APP
            # (e.g. a setup(runner) that registers HANDLERS and wraps the store to count).
            prefix = shlex.split(os.environ.get("BENCH_WORKER_PYTHON_ARGS", ""))
            app = os.environ.get("BENCH_TRIO_JOBS_APP", "_noop_app:HANDLERS")
            worker_dsn = _noop_app.with_params(dsn, application_name=WORKER_APP_NAME)

            async def drained() -> bool:
                return (await client.stats()).completed == total

            async def submit_latency(t0: float) -> None:
                await client.submit("latency", {"t0": t0})

            run = Run(
                "trio_jobs",
                schema,
                [sys.executable, *prefix, "-m", "trio_jobs", "worker", app,
                 "--dsn", worker_dsn, "--schema", schema, "--concurrency", "10",
                 "--log-level", "WARNING"],
                {},
                drained,
                "SELECT extract(epoch FROM max(completed_at)) FROM jobs",
                submit_latency,
                trio.sleep,
            )  # fmt: skip
            return await _drain_and_trickle(run, dsn, total, submitted_in, samples, folder)
    finally:
        _drop_schema(dsn, schema)


async def _fill(client: JobClient, total: int) -> float:
    """Submit ``total`` no-op jobs from PRODUCERS concurrent tasks; return the seconds taken."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(PRODUCERS):

            async def produce(k: int = k) -> None:
                for _ in range(k, total, PRODUCERS):
                    await client.submit("noop")

            nursery.start_soon(produce)
    return time.perf_counter() - start


async def bench_fleet(dsn: str, total: int, processes: int, folder: Path) -> float:
    """Drain ``total`` no-op jobs with ``processes`` workers together; return jobs/s.

    The clock runs from the first job start in any worker to the last completion.
    """
    schema = _schema(f"fleet{processes}")
    try:
        async with JobClient(PostgresStorage(dsn, schema=schema)) as client:
            await _fill(client, total)
            _analyze(dsn, schema)
            marks = [folder / f"fleet{processes}-{n}.marks" for n in range(processes)]
            _fresh(*marks)
            with contextlib.ExitStack() as stack:
                workers = [
                    stack.enter_context(
                        Worker(
                            f"fleet worker {n}",
                            [sys.executable, "-m", "trio_jobs", "worker", "_noop_app:HANDLERS",
                             "--dsn", dsn, "--schema", schema, "--concurrency", "10",
                             "--log-level", "WARNING"],
                            folder / f"fleet{processes}-{n}.log",
                            BENCH_MARKS=str(mark),
                        )
                    )
                    for n, mark in enumerate(marks)
                ]  # fmt: skip

                async def drained() -> bool:
                    return (await client.stats()).completed == total

                await _poll(drained, trio.sleep, POLL, DRAIN_LIMIT, workers[0], "fleet drain")
                first = min(_read_marks(mark) for mark in marks if mark.exists())
            last = _query_float(
                dsn, schema, "SELECT extract(epoch FROM max(completed_at)) FROM jobs"
            )
            return total / (last - first)
    finally:
        _drop_schema(dsn, schema)


# -- the peers (asyncio) --------------------------------------------------------------------


class _Counter:
    """A connection that counts finished rows; ``check()`` is true at ``total``."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], statement: str, total: int) -> None:
        self.conn, self.statement, self.total = conn, statement, total

    async def check(self) -> bool:
        cursor = await self.conn.execute(self.statement)
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0]) >= self.total


async def _produce_asyncio(enqueue: Callable[[], Awaitable[Any]], total: int) -> float:
    async def produce(k: int) -> None:
        for _ in range(k, total, PRODUCERS):
            await enqueue()

    start = time.perf_counter()
    await asyncio.gather(*(produce(k) for k in range(PRODUCERS)))
    return time.perf_counter() - start


async def bench_procrastinate(dsn: str, total: int, samples: int, folder: Path) -> Result:
    schema = _schema("procrastinate")
    conninfo = _noop_app.with_search_path(dsn, schema)
    _create_schema(dsn, schema)
    try:
        app = _noop_app.make_procrastinate_app(conninfo)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            noop, latency = app.tasks["noop"], app.tasks["latency"]
            submitted_in = await _produce_asyncio(noop.defer_async, total)

            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                succeeded = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                worker_conninfo = _noop_app.with_params(conninfo, application_name=WORKER_APP_NAME)

                async def submit_latency(t0: float) -> None:
                    await latency.defer_async(t0=t0)

                run = Run(
                    "procrastinate",
                    schema,
                    [sys.executable, "-m", "procrastinate", "--app=_noop_app.procrastinate_app",
                     "--log-level=warning", "worker", "--concurrency=10"],
                    {"BENCH_DSN": worker_conninfo},
                    _Counter(conn, succeeded, total).check,
                    "SELECT extract(epoch FROM max(at)) FROM procrastinate_events"
                    " WHERE type = 'succeeded'",
                    submit_latency,
                    asyncio.sleep,
                )  # fmt: skip
                return await _drain_and_trickle(run, dsn, total, submitted_in, samples, folder)
    finally:
        _drop_schema(dsn, schema)


async def bench_saq(dsn: str, total: int, samples: int, folder: Path) -> Result:
    schema = _schema("saq")
    url = _noop_app.with_search_path(dsn, schema)
    _create_schema(dsn, schema)
    try:
        queue = _noop_app.make_saq_queue(url)
        await queue.connect()  # creates saq's tables
        try:

            async def enqueue() -> None:
                await queue.enqueue("noop")

            submitted_in = await _produce_asyncio(enqueue, total)

            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                complete = "SELECT count(*) FROM saq_jobs WHERE status = 'complete'"

                async def submit_latency(t0: float) -> None:
                    await queue.enqueue("latency", t0=t0)

                run = Run(
                    "saq",
                    schema,
                    [sys.executable, "-m", "saq", "_noop_app.saq_settings"],
                    {"BENCH_DSN": _noop_app.with_params(url, application_name=WORKER_APP_NAME)},
                    _Counter(conn, complete, total).check,
                    # saq keeps the job as JSON bytes, "completed" in epoch ms
                    "SELECT max((convert_from(job, 'UTF8')::json->>'completed')::bigint) / 1000.0"
                    " FROM saq_jobs WHERE status = 'complete'",
                    submit_latency,
                    asyncio.sleep,
                )
                return await _drain_and_trickle(run, dsn, total, submitted_in, samples, folder)
        finally:
            await queue.disconnect()
    finally:
        _drop_schema(dsn, schema)


# -- the ceiling ----------------------------------------------------------------------------


def _create_raw_table(conn: psycopg.Connection[Any], schema: str, table: str) -> None:
    """The raw loops' queue: a schema with one table and its index of pending rows."""
    conn.execute(f'CREATE SCHEMA "{schema}"')
    conn.execute(
        f"""CREATE TABLE {table} (
            id bigserial PRIMARY KEY,
            status text NOT NULL DEFAULT 'pending',
            payload jsonb,
            claimed_at timestamptz,
            completed_at timestamptz)"""
    )
    conn.execute(f"CREATE INDEX ON {table} (id) WHERE status = 'pending'")


def bench_raw(dsn: str, total: int, samples: int) -> Result:
    schema = _schema("raw")
    table = f'"{schema}".jobs'
    claim = f"""
        UPDATE {table} SET status = 'running', claimed_at = now()
        WHERE id IN (
            SELECT id FROM {table} WHERE status = 'pending'
            ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 10)
        RETURNING id, payload"""
    complete = f"UPDATE {table} SET status = 'completed', completed_at = now() WHERE id = ANY(%s)"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _create_raw_table(conn, schema, table)
            start = time.perf_counter()
            conn.execute(
                f"INSERT INTO {table} (payload) SELECT '{{}}'::jsonb FROM generate_series(1, %s)",
                (total,),
            )
            submit = time.perf_counter() - start
            _analyze(dsn, schema)

            done = 0
            backend = Path(f"/proc/{conn.info.backend_pid}/stat")
            cpu_before = _proc_cpu(backend), time.process_time()
            start = time.perf_counter()
            while rows := conn.execute(claim).fetchall():
                conn.execute(complete, ([row[0] for row in rows],))
                done += len(rows)
            elapsed = time.perf_counter() - start
            pg_cpu = _proc_cpu(backend) - cpu_before[0]
            client_cpu = time.process_time() - cpu_before[1]
            if done != total:
                raise RuntimeError(f"raw loop completed {done} of {total}")
    finally:
        _drop_schema(dsn, schema)
    idle_p50, idle_p95 = _raw_idle_latency(dsn, samples)
    return Result("raw psycopg claim-10", rate=total / elapsed, submit=total / submit,
                  worker_cpu=client_cpu / total, pg_cpu=_nan_none(pg_cpu / total),
                  idle_p50=idle_p50, idle_p95=idle_p95,
                  note="one connection, in this process; submit is one INSERT")  # fmt: skip


def _raw_listener(dsn: str, table: str, channel: str, latencies: Any, ready: Any) -> None:
    """The floor of the idle path: LISTEN, and on each notification one claim (a process)."""
    claim = f"""
        UPDATE {table} SET status = 'running', claimed_at = now()
        WHERE id IN (
            SELECT id FROM {table} WHERE status = 'pending'
            ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 10)
        RETURNING id, payload"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}")
        ready.set()
        while True:
            # Wait on the socket, then take what arrived (psycopg also keeps aside
            # what came during a statement): as trio_jobs' LISTEN thread does.
            select.select([conn.fileno()], [], [])
            for note in list(conn.notifies(timeout=0)):
                if note.payload == "stop":
                    return
                with conn.transaction():
                    # Claims commit without waiting for the disk, as trio_jobs' do.
                    conn.execute("SET LOCAL synchronous_commit = off")
                    for _, payload in conn.execute(claim).fetchall():
                        latencies.put(time.time() - payload["t0"])


def _raw_idle_latency(dsn: str, samples: int) -> tuple[float, float]:
    """Submit->claim of single jobs 25-75 ms apart, in raw psycopg: the floor for a worker.

    The producer inserts (a durable commit) and notifies in a second transaction
    sent in the same round trip (a pipeline, as trio_jobs does); a listener in
    another process claims on each notification and takes ``time.time()`` once the
    claim's rows are back. What trio_jobs adds on top is its own work: the
    hand-off from the LISTEN thread to Trio, the attempt, the handler's start.
    """
    import multiprocessing

    schema = _schema("rawidle")
    table = f'"{schema}".jobs'
    channel = f"{schema}_work"
    ctx = multiprocessing.get_context("spawn")
    latencies = ctx.Queue()
    ready = ctx.Event()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            _create_raw_table(conn, schema, table)
            listener = ctx.Process(
                target=_raw_listener, args=(dsn, table, channel, latencies, ready)
            )
            listener.start()
            try:
                if not ready.wait(SAMPLE_LIMIT):
                    raise RuntimeError("raw listener did not start")
                insert = f"INSERT INTO {table} (payload) VALUES (%s)"
                for _ in range(samples):
                    time.sleep(random.uniform(0.025, 0.075))
                    with conn.pipeline():
                        conn.execute("BEGIN")
                        conn.execute(insert, (psycopg.types.json.Jsonb({"t0": time.time()}),))
                        conn.execute("COMMIT")
                        conn.execute(f"NOTIFY {channel}")
                found = [latencies.get(timeout=SAMPLE_LIMIT) for _ in range(samples)]
            finally:
                conn.execute(f"NOTIFY {channel}, 'stop'")
                listener.join(SAMPLE_LIMIT)
                if listener.is_alive():
                    listener.kill()
    finally:
        _drop_schema(dsn, schema)
    return _percentiles(found)


# -- main -----------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    parser.add_argument(
        "--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    parser.add_argument(
        "--fleet-jobs", type=int, default=20000, help="jobs of the fleet drain (0: none)"
    )
    parser.add_argument("--fleet-workers", type=int, default=4)
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")

    load_before = os.getloadavg()
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        folder = Path(tmp)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            folder = args.logs
        for name in only:
            print(f"... {name}", file=sys.stderr, flush=True)
            if name == "trio_jobs":
                rows.append(trio.run(bench_trio_jobs, args.dsn, args.jobs, args.samples, folder))
            elif name == "procrastinate":
                if _installed("procrastinate"):
                    rows.append(
                        asyncio.run(bench_procrastinate(args.dsn, args.jobs, args.samples, folder))
                    )
                else:
                    rows.append(Result("procrastinate", note="not installed"))
            elif name == "saq":
                if _installed("saq") and _installed("psycopg_pool"):
                    rows.append(asyncio.run(bench_saq(args.dsn, args.jobs, args.samples, folder)))
                else:
                    rows.append(Result("saq", note="not installed"))
            else:
                rows.append(bench_raw(args.dsn, args.jobs, args.samples))
        fleet: list[tuple[int, float]] = []
        if args.fleet_jobs and "trio_jobs" in only:
            for processes in (1, args.fleet_workers):
                print(f"... fleet of {processes}", file=sys.stderr, flush=True)
                rate = trio.run(bench_fleet, args.dsn, args.fleet_jobs, processes, folder)
                fleet.append((processes, rate))
    load_after = os.getloadavg()

    baseline = next((r.rate for r in rows if r.system == "procrastinate" and r.rate), None)
    print(
        f"\n{args.jobs} no-op jobs drained by one worker process with 10 slots;"
        f" submit->start over {args.samples} trickled single jobs"
    )
    print(
        f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before,"
        f" {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after"
        f" ({os.cpu_count()} CPUs)\n"
    )
    header = (
        f"{'system':<22}{'jobs/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'idle p50':>9}{'p95':>6}"
        f"{'vs procr.':>10}{'wall/s':>9}{'submit/s':>10}{'wkr CPU':>9}{'pg CPU':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r.rate / baseline:.2f}x" if baseline and r.rate else "-"
        print(
            f"{r.system:<22}{_fmt(r.rate, ',.0f'):>9}{_fmt(r.p50, '.1f', 1000):>8}"
            f"{_fmt(r.p95, '.1f', 1000):>8}{_fmt(r.idle_p50, '.1f', 1000):>9}"
            f"{_fmt(r.idle_p95, '.1f', 1000):>6}{ratio:>10}{_fmt(r.wall, ',.0f'):>9}"
            f"{_fmt(r.submit, ',.0f'):>10}{_fmt(r.worker_cpu, '.3f', 1000):>9}"
            f"{_fmt(r.pg_cpu, '.3f', 1000):>8}  {r.note}"
        )
    print(
        "\njobs/s: first job start -> last completion recorded by the store;"
        " wall/s: from spawning the worker process.\np50/p95: submit->start of single"
        " jobs trickled a few ms apart; idle p50/p95: single jobs 25-75 ms apart (random),"
        "\nthe worker idle when each arrives. wkr/pg CPU: CPU ms per job during the"
        " drain,\nof the worker process and of its PostgreSQL backends."
    )
    if fleet:
        print(f"\n{args.fleet_jobs:,} no-op jobs drained by trio_jobs worker processes"
              " (10 slots each), together\n")  # fmt: skip
        single = fleet[0][1]
        for processes, rate in fleet:
            print(f"  {processes} worker process{'es' if processes > 1 else '  '}:"
                  f" {rate:>8,.0f} jobs/s  {rate / single:.2f}x one process")  # fmt: skip
    tj = next((r for r in rows if r.system == "trio_jobs"), None)
    if tj and tj.rate and tj.p50:
        print(
            f"\ntrio_jobs vs the issue's targets: {tj.rate:,.0f} jobs/s (target >= 5,000"
            f"{', met' if tj.rate >= 5000 else ', missed'}), p50 {tj.p50 * 1000:.1f} ms"
            f" (target < 3{', met' if tj.p50 < 0.003 else ', missed'})"
        )
        if tj.idle_p50 is not None and tj.idle_p95 is not None:
            met = ", met" if tj.idle_p50 < 0.002 else ", missed"
            print(
                f"to an idle worker (25-75 ms gaps): p50 {tj.idle_p50 * 1000:.1f} ms"
                f" (target < 2{met}), p95 {tj.idle_p95 * 1000:.1f} ms"
            )
        if baseline:
            # The issue states the throughput target both ways; this one does not
            # depend on how fast the machine is today.
            times = tj.rate / baseline
            print(
                f"against procrastinate in this run: {times:.1f}x its jobs/s"
                f" (target >= 5x{', met' if times >= 5 else ', missed'})"
            )
    if len(fleet) > 1:
        times = fleet[-1][1] / fleet[0][1]
        print(
            f"{fleet[-1][0]} worker processes: {times:.2f}x the rate of one"
            f" (target >= 1x{', met' if times >= 1 else ', missed'})"
        )


if __name__ == "__main__":
    main()
