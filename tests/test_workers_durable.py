"""The workers table through the runner on durable stores (issue 12).

Real time, real database: deadlines only as generous ``fail_after`` bounds; every
wait is on a condition.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import PG_DSN
from test_cli import assert_ok, cli
from trio_jobs import Job, JobClient, JobContext, JobRunner, JobStatus, PostgresStorage

pytestmark = pytest.mark.slow


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    await trio.lowlevel.checkpoint()


async def test_a_runner_on_postgres_lists_itself_and_its_row_goes_with_it(
    pg_schema: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        runner = JobRunner(storage=PostgresStorage(PG_DSN, schema=pg_schema), concurrency=3)
        runner.register_handler("email", noop)
        async with runner:
            [me] = await runner.workers()
            assert (me.worker_id, me.concurrency) == (runner.worker_id, 3)
            assert me.job_types == frozenset({"email"})
            shown = assert_ok(
                await cli("workers", "--dsn", PG_DSN, "--schema", pg_schema, "--json", cwd=tmp_path)
            ).json()
            assert [(w["worker_id"], w["job_types"]) for w in shown] == [
                (runner.worker_id, ["email"])
            ]
            table = assert_ok(
                await cli("workers", "--dsn", PG_DSN, "--schema", pg_schema, cwd=tmp_path)
            ).stdout
            assert runner.worker_id in table
            assert "0/3" in table
        async with JobClient(PostgresStorage(PG_DSN, schema=pg_schema)) as client:
            assert await client.workers() == []


async def test_a_stale_worker_row_cancels_its_attempts_before_another_worker_claims(
    pg_schema: str,
) -> None:
    """A worker whose heartbeats fail while its process lives stops its own attempts
    (the fence) before its row expires and another worker rescues and reruns them."""
    spans: dict[str, list[float]] = {}
    first_started = trio.Event()

    async def long(job: Job[Any], ctx: JobContext[Any]) -> str:
        start = time.monotonic()
        name = "first" if not first_started.is_set() else "second"
        first_started.set()
        try:
            await trio.sleep(3600)
        finally:
            spans[name] = [start, time.monotonic()]
        return name

    async def quick(job: Job[Any], ctx: JobContext[Any]) -> str:
        spans["second"] = [time.monotonic(), time.monotonic()]
        return "second"

    lease = 2.0
    failing = PostgresStorage(PG_DSN, schema=pg_schema, lease_duration=lease)
    with trio.fail_after(60):
        async with JobRunner(storage=failing, poll_interval=0.2) as a:
            a.register_handler("job", long)
            handle = await a.submit("job")
            await first_started.wait()

            async def broken(*args: Any, **kwargs: Any) -> Any:
                await trio.lowlevel.checkpoint()
                raise OSError("the network is down (injected)")

            # A's database connection is gone; its process lives on.
            failing.heartbeat = failing.claim = failing.settle = broken  # type: ignore[method-assign]
            rescuer = PostgresStorage(PG_DSN, schema=pg_schema, lease_duration=lease)
            async with JobRunner(storage=rescuer, poll_interval=0.2) as b:
                b.register_handler("job", quick)
                assert await handle.wait() == "second"
                await b.stop()
            await a.stop()
    _, first_end = spans["first"]
    second_start, _ = spans["second"]
    assert first_end <= second_start  # never two live attempts
    job = await handle.get_status()
    assert (job.status, job.attempts) == (JobStatus.COMPLETED, 2)
