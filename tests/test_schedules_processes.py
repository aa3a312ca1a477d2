"""Schedules and unique keys across real worker processes, on SQLite and PostgreSQL.

Two ``trio-jobs worker`` processes run the same schedule (every 0.2 s): each tick
must be enqueued exactly once. Two producer processes race 200 submits each over
10 unique keys: exactly 10 jobs may be active. Real time appears only as generous
``fail_after`` deadlines; conditions are awaited by polling the store.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from test_worker_processes import client, log_dir, poll, spawn, store  # noqa: F401
from trio_jobs import JobStatus
from worker_apps import TESTS_DIR, Worker, cli_env

pytestmark = pytest.mark.slow

Store = dict[str, str]


async def test_two_workers_enqueue_each_tick_exactly_once(
    store: Store,  # noqa: F811
    spawn: Callable[..., Worker],  # noqa: F811
) -> None:
    workers = [spawn(store, "--concurrency", "4", app="worker_apps:setup_ticks") for _ in range(2)]
    async with client(store) as jobs:

        async def ticks() -> Counter[str]:
            found = await jobs.storage.list_jobs(job_type="noop")
            return Counter(j.metadata["scheduled_for"] for j in found)

        async def thirty() -> bool:
            return len(await ticks()) >= 30

        with trio.fail_after(60):
            await poll(thirty)
        for worker in workers:
            assert worker.process.poll() is None, worker.stderr()
        counts = await ticks()
        assert len(counts) >= 30
        assert set(counts.values()) == {1}, counts
        (schedule,) = await jobs.schedules()
        assert schedule.key == "ticks"
        assert schedule.every == 0.2
        assert schedule.last_run_at is not None


async def test_two_processes_racing_on_ten_keys_leave_ten_active_jobs(
    store: Store,  # noqa: F811
    tmp_path: Path,
    spawn: Callable[..., Worker],  # noqa: F811
) -> None:
    code = (
        "import json, sys, trio, worker_apps;"
        "trio.run(worker_apps.submit_unique_burst, json.loads(sys.argv[1]), 200, 10)"
    )
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(
                    partial_run, [sys.executable, "-c", code, json.dumps(store)], tmp_path
                )
        async with client(store) as jobs:
            stats = await jobs.stats()
            assert stats.pending == 10, stats
            pending = await jobs.storage.list_jobs(status=JobStatus.PENDING)
            assert sorted(j.unique_key for j in pending) == [f"key-{i}" for i in range(10)]
            worker = spawn(store)

            async def drained() -> bool:
                return (await jobs.stats()).completed == 10

            await poll(drained)
            worker.close()  # so that the next job stays active
            again = await jobs.submit("noop", unique_key="key-3")
            assert not again.deduplicated
            dup = await jobs.submit("noop", unique_key="key-3")
            assert dup.deduplicated
            assert dup.id == again.id


async def partial_run(command: list[str], cwd: Path) -> Any:
    env = cli_env()
    env["PYTHONPATH"] = f"{TESTS_DIR}:{env.get('PYTHONPATH', '')}"
    return await trio.run_process(command, cwd=cwd, env=env, check=True)
