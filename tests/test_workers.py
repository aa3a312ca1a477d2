"""The workers table as the runner and the client use it: workers() (issue 12).

The stores' own behaviour (expiry, rescue of a stale worker's jobs) is tested per
store; here, with MemoryStorage, what a runner writes and when.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import trio

from trio_jobs import Job, JobClient, JobContext, JobRunner, MemoryStorage, WorkerInfo


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    await trio.lowlevel.checkpoint()


async def test_a_runner_lists_itself_while_in_its_block(autojump_clock: Any) -> None:
    store = MemoryStorage()
    async with JobRunner(storage=store, concurrency=4) as runner:
        runner.register_handler("a", noop)
        await trio.sleep(1.5)  # a renewal writes the row again with the new type
        [me] = await runner.workers()
        assert isinstance(me, WorkerInfo)
        assert me.worker_id == runner.worker_id
        assert (me.hostname, me.pid, me.concurrency) == (socket.gethostname(), os.getpid(), 4)
        assert me.job_types == frozenset({"a"})
        assert me.started_at <= me.last_seen
    async with JobClient(store) as client:
        assert await client.workers() == []  # gone once it left its block


async def test_running_counts_what_the_runner_held_at_its_last_heartbeat(
    autojump_clock: Any,
) -> None:
    store = MemoryStorage()
    release = trio.Event()

    async def wait(job: Job[Any], ctx: JobContext[Any]) -> None:
        await release.wait()

    async with JobRunner(storage=store, concurrency=3) as runner:
        runner.register_handler("w", wait)
        for _ in range(5):
            await runner.submit("w")
        await trio.sleep(1.5)
        [me] = await runner.workers()
        assert me.running == 3
        release.set()


async def test_two_runners_on_one_store_see_each_other(autojump_clock: Any) -> None:
    store = MemoryStorage()
    async with JobRunner(storage=store) as first, JobRunner(storage=store) as second:
        first.register_handler("a", noop)
        second.register_handler("b", noop)
        await trio.sleep(1.5)
        rows = await first.workers()
        assert [w.worker_id for w in rows] == [first.worker_id, second.worker_id]
        assert [w.job_types for w in rows] == [frozenset({"a"}), frozenset({"b"})]
        assert await second.workers() == rows


async def test_a_worker_that_stops_renewing_disappears_after_its_lease(
    autojump_clock: Any,
) -> None:
    store = MemoryStorage(lease_duration=10.0)
    async with JobRunner(storage=store) as runner:
        dead = WorkerInfo(
            worker_id="elsewhere:1:dead",
            hostname="elsewhere",
            pid=1,
            started_at=(await runner.workers())[0].started_at,
            last_seen=(await runner.workers())[0].last_seen,
            concurrency=1,
            running=0,
            job_types=frozenset({"x"}),
        )
        await store.register_worker(dead)
        assert len(await runner.workers()) == 2
        await trio.sleep(11.0)  # its lease ran out; this runner kept renewing its own
        assert [w.worker_id for w in await runner.workers()] == [runner.worker_id]


async def test_a_store_without_a_workers_table_says_so() -> None:
    class NoTable:
        def __init__(self) -> None:
            self.inner = MemoryStorage()

        def __getattr__(self, name: str) -> Any:
            if name in ("register_worker", "unregister_worker", "workers"):
                raise AttributeError(name)
            if name in ("claim_nowait", "settle_nowait", "save_nowait", "wake"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    async with JobRunner(storage=NoTable()) as runner:  # type: ignore[arg-type]
        with pytest.raises(NotImplementedError, match="NoTable keeps no workers table"):
            await runner.workers()
