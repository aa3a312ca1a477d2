"""``trio-jobs list --follow``: print each change to the listed jobs as it happens.

After the list, the command watches the store until Ctrl-C (or SIGTERM): it
sleeps until the store says something changed, then reads the newest jobs again
and prints one line per job whose status, attempts or progress moved. On
PostgreSQL every write sends a notification, so changes show within a round trip.
On SQLite the wake-up path between processes announces new and requeued work at
once; the rest (starts, completions) is seen by a poll every
:data:`FOLLOW_POLL` seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from .._client import JobClient
from .._records import Job, JobStatus
from ._format import attempts_text, format_age, job_to_json, one_line

#: The longest wait between two looks at the store (seconds).
FOLLOW_POLL = 1.0

_Key = tuple[str, int, float | None, str | None]


def _key(job: Job[Any]) -> _Key:
    return (job.status.value, job.attempts, job.progress, job.progress_message)


def change_line(job: Job[Any], now: datetime | None = None) -> str:
    """One line for a job that changed: time, id, type, status, attempts, and what matters."""
    now = now or datetime.now(UTC)
    extra = ""
    if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
        extra = _next_run(job, now)
    elif job.status is JobStatus.RUNNING and job.progress is not None:
        extra = f"{job.progress:.0f}%" + (
            f" {job.progress_message}" if job.progress_message else ""
        )
    elif job.status in (JobStatus.FAILED, JobStatus.TIMEOUT) and job.last_error is not None:
        extra = f"{job.last_error.type}: {one_line(job.last_error.message, 120)}"
    when = now.strftime("%H:%M:%S")
    return "  ".join(
        part
        for part in (when, job.id, job.type, job.status.value, attempts_text(job), extra)
        if part
    )


def _next_run(job: Job[Any], now: datetime) -> str:
    if job.run_at is None or job.run_at <= now:
        return "runs when a worker is free"
    return f"runs {format_age(job.run_at, now)}"


async def follow_jobs(
    client: JobClient, args: argparse.Namespace, jobs: Sequence[Job[Any]]
) -> None:
    """Watch the jobs ``list`` would show and print each change, until a signal.

    With ``--json`` each line is a job as JSON (the listed ones first, oldest first).
    """
    storage = client.storage
    wait: Callable[[float], Awaitable[None]] | None = getattr(
        storage, "wait_for_any_change", None
    ) or getattr(storage, "wait_for_work", None)
    seen = {job.id: _key(job) for job in jobs}
    if args.json:
        for job in reversed(jobs):
            print(json.dumps(job_to_json(job), ensure_ascii=False))
    else:
        print("following changes (Ctrl-C stops):")
    sys.stdout.flush()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            while True:
                if wait is None:
                    await trio.sleep(FOLLOW_POLL)
                else:
                    await wait(FOLLOW_POLL)
                latest = await storage.list_jobs(
                    status=args.status, job_type=args.type, limit=args.limit
                )
                for job in reversed(latest):  # oldest first
                    key = _key(job)
                    if seen.get(job.id) == key:
                        continue
                    seen[job.id] = key
                    if args.json:
                        print(json.dumps(job_to_json(job), ensure_ascii=False))
                    else:
                        print(change_line(job))
                sys.stdout.flush()
                if len(seen) > 4 * args.limit:
                    # Forget jobs that fell off the list (bounded memory).
                    seen = {job.id: _key(job) for job in latest}


__all__ = ["FOLLOW_POLL", "change_line", "follow_jobs"]
