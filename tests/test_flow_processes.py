"""Flow control across two worker processes, on SQLite and on PostgreSQL.

The workers are ``trio-jobs worker`` subprocesses (see ``test_worker_processes``);
the ``metered`` handler logs when each attempt starts and ends, and the store's
``started_at``. Real time appears only as generous deadlines; conditions are
awaited by polling the store.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from test_worker_processes import Store, client, log_dir, poll, spawn, store, until_started
from trio_jobs import JobStatus
from worker_apps import Worker

pytestmark = pytest.mark.slow

__all__ = ["log_dir", "spawn", "store"]  # the process fixtures, shared

POLL = 0.2


def flow_logs(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("*.flow"))


def read_flow(log_dir: Path) -> list[tuple[str, float, float, str]]:
    lines = []
    for path in flow_logs(log_dir):
        for line in path.read_text().splitlines():
            event, wall, started, job_id = line.split()
            lines.append((event, float(wall), 0.0 if started == "-" else float(started), job_id))
    return lines


async def two_workers(store: Store, spawn: Callable[..., Worker]) -> list[Worker]:
    workers = [spawn(store, "--concurrency", "10", "--poll-interval", str(POLL)) for _ in range(2)]
    for worker in workers:
        await until_started(worker)
    return workers


async def stop(workers: list[Worker]) -> None:
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert await worker.wait() == 0, worker.stderr()


async def test_max_running_3_is_never_exceeded_across_two_workers(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(90):
        async with client(store) as jobs:
            await jobs.set_limits("metered", max_running=3)
            workers = await two_workers(store, spawn)
            for _ in range(24):
                await jobs.submit("metered", {"seconds": 0.05})

            async def all_done() -> bool:
                return (await jobs.stats()).completed == 24

            await poll(all_done, 0.1)
        await stop(workers)
    # The most attempts running at once, as the handlers saw it.
    events = sorted(
        (wall, 1 if event == "start" else -1) for event, wall, _, _ in read_flow(log_dir)
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak <= 3
    assert sum(1 for _, change in events if change == 1) == 24
    assert len(flow_logs(log_dir)) == 2  # both workers took part


async def test_rate_20_per_second_is_never_exceeded_across_two_workers(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(90):
        async with client(store) as jobs:
            await jobs.set_limits("metered", rate=(20, 1.0))
            workers = await two_workers(store, spawn)
            for _ in range(60):
                await jobs.submit("metered", {"seconds": 0})

            async def all_done() -> bool:
                return (await jobs.stats()).completed == 60

            await poll(all_done, 0.1)
        await stop(workers)
    starts = sorted(started for event, _, started, _ in read_flow(log_dir) if event == "start")
    assert len(starts) == 60
    # Any 1-second window [t, t + 1) holds at most 20 starts (the store's times).
    for i, first in enumerate(starts):
        assert sum(1 for at in starts[i:] if at < first + 1.0) <= 20
    assert starts[-1] - starts[0] >= 2.0  # 60 starts need three windows


async def test_pause_stops_claims_and_resume_restarts_across_two_workers(
    store: Store, spawn: Callable[..., Worker], log_dir: Path
) -> None:
    with trio.fail_after(90):
        async with client(store) as jobs:
            workers = await two_workers(store, spawn)
            await jobs.pause("metered")
            paused_at = time.time()
            ids = [(await jobs.submit("metered", {"seconds": 0})).id for _ in range(10)]
            # Nothing to wait for: the point is that nothing happens. Several polls
            # of both workers go by.
            await trio.sleep(5 * POLL)
            assert read_flow(log_dir) == []
            waiting = [await jobs.get_job(job_id) for job_id in ids]
            assert [job.status if job else None for job in waiting] == [JobStatus.PENDING] * 10
            await jobs.resume("metered")

            async def all_done() -> bool:
                return (await jobs.stats()).completed == 10

            await poll(all_done, 0.1)
        await stop(workers)
    starts = [started for event, _, started, _ in read_flow(log_dir) if event == "start"]
    assert len(starts) == 10
    assert min(starts) > paused_at
