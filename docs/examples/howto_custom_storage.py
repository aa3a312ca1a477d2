"""How-to: a custom storage backend, kept small to show the rules of the protocol.

``DictStorage`` keeps jobs in a dict and scans it linearly: a teaching store, not a
fast one (use :class:`trio_jobs.MemoryStorage` for that). A real backend has the same
shape: replace each method body with a query, keeping each rule the comments name.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from trio_jobs import (
    CancelOutcome,
    ErrorInfo,
    Heartbeat,
    Job,
    JobContext,
    JobRunner,
    JobStats,
    JobStatus,
    JobStorage,
    RetryConfig,
)

WAITING = (JobStatus.PENDING, JobStatus.RETRYING)
FAILED_FOR_GOOD = (JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED)


def now() -> datetime:
    return datetime.now(UTC)


@attrs.define
class Row:
    """What the store keeps per job: the snapshot, plus the claim's bookkeeping."""

    job: Job[Any]
    seq: int  # insertion order: FIFO within a priority
    ready_at: float  # Trio clock; a real database keeps a wall-clock run_at
    worker_id: str | None = None
    lease_expires: float = math.inf
    cancel_requested: bool = False


class DictStorage:
    """A complete :class:`~trio_jobs.JobStorage` in ~200 lines."""

    def __init__(self, *, lease_duration: float = 30.0) -> None:
        self._lease_duration = lease_duration
        self._rows: dict[str, Row] = {}
        self._seq = itertools.count()
        self._changed = trio.Event()  # set on every write; waiters re-check

    @property
    def lease_duration(self) -> float:
        return self._lease_duration

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # Every method is async and checkpoints, even when it has nothing to await.
    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    # -- the seed's methods -------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        await trio.lowlevel.checkpoint()
        if job.id in self._rows:
            raise ValueError(f"a job with id {job.id!r} exists already")
        # A durable store encodes the payload here and raises TypeError, naming
        # the field, when it cannot: before anything is stored.
        if delay > 0 and job.run_at is None:
            job = attrs.evolve(job, run_at=now() + timedelta(seconds=delay))
        self._rows[job.id] = Row(job, next(self._seq), trio.current_time() + delay)
        self._touch()

    async def update(self, job: Job[Any]) -> None:
        await trio.lowlevel.checkpoint()
        self._rows[job.id].job = job  # administrative: unconditional, not fenced
        self._touch()

    async def get(self, job_id: str) -> Job[Any] | None:
        await trio.lowlevel.checkpoint()
        row = self._rows.get(job_id)
        return None if row is None else row.job

    def _ready(self, job_types: Collection[str] | None) -> list[Row]:
        """Claimable rows in claim order: priority, then when ready, then insertion."""
        clock = trio.current_time()
        rows = [
            row
            for row in self._rows.values()
            if row.job.status in WAITING
            and row.ready_at <= clock
            and (job_types is None or row.job.type in job_types)
        ]
        rows.sort(key=lambda row: (-row.job.priority, row.ready_at, row.seq))
        return rows

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        await trio.lowlevel.checkpoint()
        return [row.job for row in self._ready(None)[:limit]]

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        await trio.lowlevel.checkpoint()
        jobs = [row.job for row in self._rows.values() if row.job.status is status]
        return jobs[:limit]

    async def mark_running(self, job_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        row = self._rows.get(job_id)
        if row is None or row.job.status is not JobStatus.PENDING:
            return False
        row.job = attrs.evolve(row.job, status=JobStatus.RUNNING, attempts=row.job.attempts + 1)
        self._touch()
        return True

    async def delete(self, job_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        found = self._rows.pop(job_id, None) is not None
        self._touch()
        return found

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        await trio.lowlevel.checkpoint()
        jobs = [r.job for r in self._rows.values() if job_types is None or r.job.type in job_types]
        counts = Counter(job.status for job in jobs)
        times = [
            job.execution_time
            for job in jobs
            if job.status is JobStatus.COMPLETED and job.execution_time is not None
        ]
        return JobStats(
            pending=counts[JobStatus.PENDING],
            running=counts[JobStatus.RUNNING],
            retrying=counts[JobStatus.RETRYING],
            completed=counts[JobStatus.COMPLETED],
            failed=counts[JobStatus.FAILED],
            cancelled=counts[JobStatus.CANCELLED],
            timeout=counts[JobStatus.TIMEOUT],
            total_processed=sum(n for status, n in counts.items() if status.is_final),
            average_execution_time=sum(times) / len(times) if times else None,
        )

    # -- claims, leases, fenced writes --------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        await trio.lowlevel.checkpoint()
        # Rule: atomic. Selecting and marking happen with no checkpoint between
        # them, so no other task can claim the same rows; a database does it in one
        # statement (FOR UPDATE SKIP LOCKED, or BEGIN IMMEDIATE on SQLite).
        claimed = []
        for row in self._ready(job_types)[:limit]:
            row.job = attrs.evolve(
                row.job, status=JobStatus.RUNNING, attempts=row.job.attempts + 1, started_at=now()
            )
            row.worker_id = worker_id
            row.lease_expires = trio.current_time() + self._lease_duration
            claimed.append(row.job)
        if claimed:
            self._touch()
        return claimed

    def _held(self, job_id: str, worker_id: str, attempt: int) -> Row | None:
        """The fence: the row, if this worker still holds this attempt's claim."""
        row = self._rows.get(job_id)
        if (
            row is None
            or row.job.status is not JobStatus.RUNNING
            or row.job.attempts != attempt
            or row.worker_id != worker_id
        ):
            return None
        return row

    async def settle(
        self,
        job_id: str,
        *,
        worker_id: str,
        attempt: int,
        status: JobStatus,
        result: Any = None,
        error: ErrorInfo | None = None,
        delay: float = 0.0,
        execution_time: float | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint()
        row = self._held(job_id, worker_id, attempt)
        if row is None:
            return False  # Rule: fenced. A stale worker writes nothing.
        job = row.job
        if status in WAITING and row.cancel_requested:
            status = JobStatus.CANCELLED  # Rule: a requested cancel wins over a retry
        changes: dict[str, Any] = {"status": status, "execution_time": execution_time}
        if error is not None:
            changes["last_error"] = error
        if status is JobStatus.COMPLETED:
            changes["result"] = result
        if status.is_final:
            changes["completed_at"] = now()
        if status in WAITING:
            changes |= {"progress": None, "progress_message": None}  # Rule: a fresh attempt
        if status is JobStatus.RETRYING:
            changes["run_at"] = now() + timedelta(seconds=delay)
            row.ready_at = trio.current_time() + delay
        elif status is JobStatus.PENDING:
            changes["attempts"] = job.attempts - 1  # Rule: an orderly stop is uncounted
            row.ready_at = trio.current_time()
        row.job = attrs.evolve(job, **changes)
        row.worker_id, row.lease_expires = None, math.inf  # Rule: the lease is dropped
        row.cancel_requested = row.cancel_requested and not status.is_final
        self._touch()
        return True

    async def record_progress(
        self,
        job_id: str,
        *,
        worker_id: str,
        attempt: int,
        progress: float | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        await trio.lowlevel.checkpoint()
        row = self._held(job_id, worker_id, attempt)  # fenced like settle()
        if row is None:
            return False
        row.job = attrs.evolve(
            row.job,
            progress=progress,
            progress_message=message,
            metadata={**row.job.metadata, **(metadata or {})},
        )
        self._touch()
        return True

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        await trio.lowlevel.checkpoint()
        held, cancel = set(), set()
        for job_id in job_ids:
            row = self._rows.get(job_id)
            if row is not None and row.worker_id == worker_id:
                row.lease_expires = trio.current_time() + self._lease_duration
                held.add(job_id)
                if row.cancel_requested:
                    cancel.add(job_id)
        # Rule: report the claims the worker lost, so it stops working on them.
        return Heartbeat(cancel_requested=frozenset(cancel), lost=frozenset(set(job_ids) - held))

    async def rescue_expired(self) -> list[Job[Any]]:
        await trio.lowlevel.checkpoint()
        rescued = []
        for row in self._rows.values():
            if row.job.status is not JobStatus.RUNNING or row.lease_expires > trio.current_time():
                continue
            job = row.job  # its worker died: the crashed attempt stays counted
            lost = ErrorInfo(
                message=f"worker {row.worker_id} was lost during attempt {job.attempts}",
                type="WorkerLostError",
                attempt=job.attempts,
                retryable=True,
            )
            if row.cancel_requested:
                row.job = attrs.evolve(job, status=JobStatus.CANCELLED, completed_at=now())
            elif job.attempts >= job.max_attempts:
                row.job = attrs.evolve(
                    job, status=JobStatus.FAILED, last_error=lost, completed_at=now()
                )
            else:
                row.job = attrs.evolve(
                    job, status=JobStatus.PENDING, last_error=lost, progress=None,
                    progress_message=None,
                )  # fmt: skip
                row.ready_at = trio.current_time()
            row.worker_id, row.lease_expires = None, math.inf
            rescued.append(row.job)
        if rescued:
            self._touch()
        return rescued

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        await trio.lowlevel.checkpoint()
        row = self._rows.get(job_id)
        if row is None or row.job.status.is_final:
            return CancelOutcome.NOTHING
        if row.job.status is JobStatus.RUNNING:
            row.cancel_requested = True  # its worker learns it from heartbeat()
            self._touch()
            return CancelOutcome.REQUESTED
        row.job = attrs.evolve(row.job, status=JobStatus.CANCELLED, completed_at=now())
        self._touch()
        return CancelOutcome.CANCELLED

    # -- waiting --------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        # Spurious returns are fine: the runner claims, and waits again if idle.
        upcoming = [r.ready_at for r in self._rows.values() if r.job.status in WAITING]
        deadline = min([trio.current_time() + timeout, *upcoming])
        with trio.move_on_at(deadline):
            await self._changed.wait()

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()

    # -- administration ---------------------------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        await trio.lowlevel.checkpoint()
        jobs = [
            row.job
            for row in sorted(self._rows.values(), key=lambda row: -row.seq)
            if (status is None or row.job.status is status)
            and (job_type is None or row.job.type == job_type)
        ]
        return jobs[:limit]

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        await trio.lowlevel.checkpoint()
        return sum(
            1
            for row in self._rows.values()
            if not row.job.status.is_final and (job_types is None or row.job.type in job_types)
        )

    async def requeue(self, job_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        row = self._rows.get(job_id)
        if row is None or row.job.status not in FAILED_FOR_GOOD:
            return False
        row.job = attrs.evolve(
            row.job, status=JobStatus.PENDING, attempts=0, completed_at=None, result=None
        )
        row.ready_at = trio.current_time()
        self._touch()
        return True

    async def purge(self, older_than: float) -> int:
        await trio.lowlevel.checkpoint()
        cutoff = now() - timedelta(seconds=older_than)
        old = [
            job_id
            for job_id, row in self._rows.items()
            if row.job.completed_at is not None and row.job.completed_at < cutoff
        ]
        for job_id in old:
            del self._rows[job_id]
        return len(old)


# -- using it ---------------------------------------------------------------------------


async def the_rules_by_hand() -> None:
    """Claims, leases, rescue and fencing, driven by hand as two workers would."""
    store = DictStorage(lease_duration=1.0)
    await store.save(Job(id="j1", type="report"))
    [job] = await store.claim("worker-a", 5)
    print("worker-a claimed", job.id, "attempt", job.attempts)
    print("worker-b finds nothing to claim:", await store.claim("worker-b", 5))

    await trio.sleep(1.5)  # worker-a hangs past its lease without a heartbeat
    [rescued] = await store.rescue_expired()
    print("rescued:", rescued.status, "attempts", rescued.attempts, "(the lost one counts)")
    [job] = await store.claim("worker-b", 5)
    print("worker-b claimed", job.id, "attempt", job.attempts)

    stale = await store.settle("j1", worker_id="worker-a", attempt=1, status=JobStatus.COMPLETED)
    print("worker-a's late settle applied:", stale)
    beat = await store.heartbeat("worker-a", ["j1"])
    print("worker-a's heartbeat says it lost:", sorted(beat.lost))
    done = await store.settle(
        "j1", worker_id="worker-b", attempt=2, status=JobStatus.COMPLETED, result="ok"
    )
    final = await store.get("j1")
    assert final is not None
    print("worker-b's settle applied:", done, "->", final.status, repr(final.result))


async def with_a_runner() -> None:
    """The runner needs nothing more: retries, timeouts and cancellation all work."""

    async def flaky(job: Job[int], ctx: JobContext[int]) -> int:
        if ctx.attempt < 2:
            raise ConnectionError("connection reset")
        return job.payload * 2

    store = DictStorage()
    assert isinstance(store, JobStorage)  # the protocol is runtime-checkable
    async with JobRunner(storage=store, default_retry=RetryConfig(base_delay=1.0)) as runner:
        runner.register_handler("double", flaky)
        handle = await runner.submit("double", 21)
        print("result through DictStorage:", await handle.wait())
        print("attempts:", (await handle.get_status()).attempts)


async def main() -> None:
    await the_rules_by_hand()
    await with_a_runner()


if __name__ == "__main__":
    trio.run(main)
