"""The in-memory store: the default, event-driven, and as cheap per job as we can make it."""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, final

import trio
from attrs import evolve

from .._flow import JobTypeLimits, tenant_key
from .._priority_channel import PriorityReceiveChannel, PrioritySendChannel, open_priority_channel
from .._records import ErrorInfo, Job, JobStatus, Schedule, WorkerInfo, replace, utcnow
from ._base import CancelOutcome, Heartbeat
from ._memory_admin import MemoryAdmin
from ._memory_browse import MemoryBrowsing
from ._memory_flow import MemoryFlowControl, TenantHeap

_WAITING = (JobStatus.PENDING, JobStatus.RETRYING)
_UNFINISHED = frozenset({JobStatus.PENDING, JobStatus.RETRYING, JobStatus.RUNNING})
_RUNNING = JobStatus.RUNNING


def worker_lost_error(worker_id: str, attempt: int) -> ErrorInfo:
    """The error recorded on a job whose worker stopped renewing its lease."""
    return ErrorInfo(
        message=f"worker {worker_id} was lost (lease expired) during attempt {attempt}",
        type="WorkerLostError",
        attempt=attempt,
        retryable=True,
    )


def _head_key(queue: _Queue) -> tuple[int, int]:
    """The claim order of a queue's live head: (-priority, seq)."""
    return (-(queue.receive.peek_priority() or 0), queue.receive.peek()[0])


class _Queue:
    """The ready jobs of one type."""

    __slots__ = ("receive", "send")

    def __init__(self) -> None:
        self.send: PrioritySendChannel[tuple[int, str]]
        self.receive: PriorityReceiveChannel[tuple[int, str]]
        self.send, self.receive = open_priority_channel()


@final
class MemoryStorage(MemoryFlowControl, MemoryBrowsing, MemoryAdmin):
    """Keeps jobs in this process's memory: fast, and gone when the process ends.

    The default store of :class:`JobRunner`. It is event-driven: a submit wakes the
    scheduler at once, and delays, retry backoffs and leases are timed on the Trio
    clock, so :class:`trio.testing.MockClock` drives them in tests. One store may be
    shared by several runners and clients *in the same process*.

    Args:
        lease_duration: Seconds a claim stays valid without a heartbeat.
    """

    def __init__(self, *, lease_duration: float = 30.0) -> None:
        if isinstance(lease_duration, bool) or not isinstance(lease_duration, int | float):
            raise TypeError(f"lease_duration must be a number of seconds, got {lease_duration!r}")
        if math.isnan(lease_duration) or lease_duration <= 0:
            raise ValueError(f"lease_duration must be > 0, got {lease_duration!r}")
        self._lease_duration = float(lease_duration)
        self._jobs: dict[str, Job[Any]] = {}
        self._seq = 0
        # Ready jobs: a priority channel per job type (best first, FIFO within a
        # priority), carrying (seq, job_id). An entry is live while _queued maps its
        # job to its seq: cancelling a queued job just forgets it.
        self._ready: dict[str, _Queue] = {}
        self._queued: dict[str, int] = {}
        # Delayed jobs (delays and retry backoffs), by due time on the Trio clock.
        self._delayed: list[tuple[float, int, str]] = []
        self._scheduled: dict[str, int] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._cancel_requested: set[str] = set()
        self._counts: Counter[JobStatus] = Counter()
        self._unfinished_by_type: Counter[str] = Counter()
        self._completed_time = 0.0
        self._completed_timed = 0
        self._work = trio.Event()
        self._cancel_signal = trio.Event()
        self._watchers: dict[str, trio.Event] = {}
        # The workers table: each registered worker's row and its expiry (Trio clock).
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        # unique_key -> the active (pending, running, retrying) job holding it.
        self._unique: dict[str, str] = {}
        # Schedules by key, and the ticks enqueued: (key, tick as unix seconds).
        self._schedules: dict[str, Schedule] = {}
        #: The newest tick taken of each schedule key (see enqueue_tick).
        self._ticks: dict[str, datetime] = {}
        #: The rows registered through this object, put back if a rescue dropped them.
        self._registered: dict[str, WorkerInfo] = {}
        # Flow control. Types with active limits keep their ready jobs in a heap per
        # tenant, (-priority, seq, job_id), instead of their channel: a claim looks at
        # each tenant's head (see _flow.TypeBudget). Running counts come from the
        # records (_put), so a rescue or an overwrite keeps them right.
        self._limits: dict[str, JobTypeLimits] = {}
        self._heads: dict[str, dict[str, TenantHeap]] = {}
        self._running: Counter[str] = Counter()
        self._running_tenant: Counter[tuple[str, str]] = Counter()
        self._starts: dict[str, deque[float]] = {}
        self._passes: dict[str, dict[str, tuple[float, float]]] = {}
        self._weights: dict[str, float] = {}

    @property
    def lease_duration(self) -> float:
        """Seconds a claim stays valid without a heartbeat (Trio clock)."""
        return self._lease_duration

    async def open(self) -> None:
        """Nothing to open; present for the protocol."""
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Nothing to close; the jobs stay readable."""
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- bookkeeping: every write goes through _put ---------------------------------

    def _put(self, job: Job[Any]) -> None:
        old = self._jobs.get(job.id)
        if old is not None:
            self._uncount(old)
        self._jobs[job.id] = job
        status = job.status
        self._counts[status] += 1
        if status is _RUNNING:
            self._running[job.type] += 1
            self._running_tenant[job.type, tenant_key(job.tenant_id)] += 1
        elif old is not None and old.status is _RUNNING and job.type in self._limits:
            self._work.set()  # a limited type's slot freed: a waiting claim may go
        if status in _UNFINISHED:
            self._unfinished_by_type[job.type] += 1
            if job.unique_key is not None:
                self._unique[job.unique_key] = job.id
        elif status is JobStatus.COMPLETED and job.execution_time is not None:
            self._completed_time += job.execution_time
            self._completed_timed += 1
        watcher = self._watchers.pop(job.id, None)
        if watcher is not None:
            watcher.set()

    def _uncount(self, job: Job[Any]) -> None:
        status = job.status
        self._counts[status] -= 1
        if status is _RUNNING:
            self._running[job.type] -= 1
            self._running_tenant[job.type, tenant_key(job.tenant_id)] -= 1
        if status in _UNFINISHED:
            self._unfinished_by_type[job.type] -= 1
            if job.unique_key is not None and self._unique.get(job.unique_key) == job.id:
                del self._unique[job.unique_key]
        elif status is JobStatus.COMPLETED and job.execution_time is not None:
            self._completed_time -= job.execution_time
            self._completed_timed -= 1

    def _enqueue(self, job: Job[Any], delay: float, *, wake: bool = True) -> None:
        self._seq = seq = self._seq + 1
        if delay > 0:
            self._scheduled[job.id] = seq
            heapq.heappush(self._delayed, (trio.current_time() + delay, seq, job.id))
        else:
            self._push_ready(job, seq)
        if wake:
            self._work.set()

    def _push_ready(self, job: Job[Any], seq: int) -> None:
        self._queued[job.id] = seq
        heads = self._heads.get(job.type)
        if heads is not None:
            tenant = tenant_key(job.tenant_id)
            heap = heads.get(tenant)
            if heap is None:
                heap = heads[tenant] = []
            heapq.heappush(heap, (-job.priority, seq, job.id))
            return
        queue = self._ready.get(job.type)
        if queue is None:
            queue = self._ready[job.type] = _Queue()
        queue.send.send_nowait((seq, job.id), job.priority)

    def _unqueue(self, job_id: str) -> None:
        self._queued.pop(job_id, None)
        self._scheduled.pop(job_id, None)

    def _release_due(self) -> bool:
        """Move delayed jobs whose time has come to the ready queues; True if any."""
        delayed = self._delayed
        now = trio.current_time()
        released = False
        while delayed and delayed[0][0] <= now:
            _, seq, job_id = heapq.heappop(delayed)
            if self._scheduled.get(job_id) == seq:
                del self._scheduled[job_id]
                # It queues from its due time, as the durable stores order by run_at.
                self._seq = seq = self._seq + 1
                self._push_ready(self._jobs[job_id], seq)
                released = True
        return released

    def _best_queue(self, job_types: Collection[str] | None) -> _Queue | None:
        """Return the queue holding the best ready job among ``job_types``."""
        queued = self._queued
        best: _Queue | None = None
        best_key = (0, 0)
        for job_type, queue in self._ready.items():
            if job_types is not None and job_type not in job_types:
                continue
            receive = queue.receive
            while len(receive):
                seq, job_id = receive.peek()
                if queued.get(job_id) == seq:
                    key = (-(receive.peek_priority() or 0), seq)
                    if best is None or key < best_key:
                        best, best_key = queue, key
                    break
                receive.receive_nowait()  # a cancelled or re-queued job's old entry
        return best

    def _finish(self, job: Job[Any], **changes: Any) -> Job[Any]:
        self._unqueue(job.id)
        self._leases.pop(job.id, None)
        self._cancel_requested.discard(job.id)
        new = replace(job, **changes)
        self._put(new)
        return new

    # Flow control (limits, pauses, tenant turns) is MemoryFlowControl's, in
    # _memory_flow; _route stays here, beside _push_ready, as it moves ready jobs
    # between the channels and the per-tenant heaps.

    def _route(self, job_type: str) -> None:
        """Move the type's ready jobs to per-tenant heaps or back, as its limits say."""
        limited = job_type in self._limits
        queued, jobs = self._queued, self._jobs
        if limited and job_type not in self._heads:
            self._heads[job_type] = {}
            queue = self._ready.pop(job_type, None)
            if queue is not None:
                while len(queue.receive):
                    seq, job_id = queue.receive.receive_nowait()
                    if queued.get(job_id) == seq:
                        self._push_ready(jobs[job_id], seq)
        elif not limited and job_type in self._heads:
            heads = self._heads.pop(job_type)
            entries = sorted(entry for heap in heads.values() for entry in heap)
            for _, seq, job_id in entries:
                if queued.get(job_id) == seq:
                    self._push_ready(jobs[job_id], seq)
        self._work.set()

    # -- the seed's methods ----------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Insert a new job, claimable ``delay`` seconds from now (Trio clock).

        Raises:
            ValueError: a job with this id exists already.
        """
        await trio.lowlevel.checkpoint()
        self.save_nowait(job, delay=delay)

    def save_nowait(self, job: Job[Any], *, delay: float = 0.0, wake: bool = True) -> None:
        """Like :meth:`save`, without a checkpoint.

        ``wake=False`` leaves tasks in :meth:`wait_for_work` asleep: for a runner
        that claims the job itself right away.
        """
        if job.id in self._jobs:
            raise ValueError(f"a job with id {job.id!r} exists already")
        if job.unique_key is not None and job.unique_key in self._unique:
            raise ValueError(f"an active job holds the unique_key {job.unique_key!r}")
        if delay > 0 and job.run_at is None:
            job = replace(job, run_at=utcnow() + timedelta(seconds=delay))
        self._put(job)
        if job.status in _WAITING:
            self._enqueue(job, delay, wake=wake or delay > 0)

    async def save_many(self, jobs: Sequence[Job[Any]], *, delay: float = 0.0) -> list[str]:
        """Insert new jobs, all or none; see ``BatchStorage.save_many``.

        Raises:
            ValueError: a job with one of these ids exists already; nothing is stored.
        """
        await trio.lowlevel.checkpoint()
        return self.save_many_nowait(jobs, delay=delay)

    def save_many_nowait(self, jobs: Sequence[Job[Any]], *, delay: float = 0.0) -> list[str]:
        """:meth:`save_many` without a checkpoint (nothing can interleave with it)."""
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids) or any(job_id in self._jobs for job_id in ids):
            raise ValueError("a job with one of these ids exists already")
        holders: list[str] = []
        for job in jobs:
            key = job.unique_key
            holder = None if key is None else self._unique.get(key)
            if holder is None:
                self.save_nowait(job, delay=delay)
                holder = job.id
            holders.append(holder)
        return holders

    def unique_holder(self, unique_key: str) -> str | None:
        """The id of the active job holding ``unique_key``, if any."""
        return self._unique.get(unique_key)

    async def put_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule's definition, keeping its ``last_run_at``."""
        await trio.lowlevel.checkpoint()
        old = self._schedules.get(schedule.key)
        last = None if old is None else old.last_run_at
        self._schedules[schedule.key] = evolve(schedule, next_run_at=None, last_run_at=last)

    async def list_schedules(self) -> list[Schedule]:
        """Return the schedules by key."""
        await trio.lowlevel.checkpoint()
        return [self._schedules[key] for key in sorted(self._schedules)]

    async def enqueue_tick(
        self, key: str, tick: datetime, job: Job[Any], *, delay: float = 0.0
    ) -> bool:
        """Save ``job`` unless a tick of ``key`` at or after ``tick`` was taken already."""
        await trio.lowlevel.checkpoint()
        newest = self._ticks.get(key)
        if newest is not None and tick <= newest:
            return False
        self.save_nowait(job, delay=delay)
        self._ticks[key] = tick
        schedule = self._schedules.get(key)
        if schedule is not None and (schedule.last_run_at is None or schedule.last_run_at < tick):
            self._schedules[key] = evolve(schedule, last_run_at=tick)
        return True

    async def purge_batch(
        self, status: JobStatus, older_than: float, *, limit: int, holder: str
    ) -> int | None:
        """Delete up to ``limit`` jobs of ``status`` completed over ``older_than`` s ago."""
        await trio.lowlevel.checkpoint()
        cutoff = utcnow() - timedelta(seconds=older_than)
        old = []
        for job in self._jobs.values():
            if job.status is status and job.completed_at is not None and job.completed_at < cutoff:
                old.append(job.id)
                if len(old) >= limit:
                    break
        for job_id in old:
            self._uncount(self._jobs.pop(job_id))
        return len(old)

    async def get(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None``."""
        await trio.lowlevel.checkpoint()
        return self._jobs.get(job_id)

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Return up to ``limit`` ready jobs in claim order, without claiming them."""
        await trio.lowlevel.checkpoint()
        if self._delayed:
            self._release_due()
        jobs = self._jobs
        best = heapq.nsmallest(
            limit, self._queued.items(), key=lambda item: (-jobs[item[0]].priority, item[1])
        )
        return [jobs[job_id] for job_id, _ in best]

    # -- claims, leases, fenced writes -----------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Claim up to ``limit`` ready jobs: best priority first, FIFO within one."""
        await trio.lowlevel.checkpoint()
        return self.claim_nowait(worker_id, limit, job_types)

    def claim_nowait(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Like :meth:`claim`, without a checkpoint: the runner's fast path.

        A store whose operations never block may offer ``claim_nowait`` and
        ``settle_nowait``; the runner then skips a trip through Trio's scheduler per
        job (its loops checkpoint elsewhere).
        """
        if self._delayed:
            self._release_due()
        queued, jobs = self._queued, self._jobs
        claimed: list[Job[Any]] = []
        now = utcnow()
        expires = trio.current_time() + self._lease_duration
        budgets = self._budgets(job_types) if self._heads else None
        while len(claimed) < limit:
            queue = self._best_queue(job_types)
            if budgets:
                flow = self._flow_pick(budgets)
                if flow is not None and (queue is None or flow[0] < _head_key(queue)):
                    _, tenant, job_id, job_type = flow
                    heapq.heappop(self._heads[job_type][tenant])
                    self._start_flow(budgets[job_type], tenant)
                    queue = None
                elif queue is None:
                    break
                else:
                    _, job_id = queue.receive.receive_nowait()
            elif queue is None:
                break
            else:
                _, job_id = queue.receive.receive_nowait()
            del queued[job_id]
            job = jobs[job_id]
            running = replace(job, status=_RUNNING, attempts=job.attempts + 1, started_at=now)
            self._put(running)
            self._leases[job_id] = (worker_id, expires)
            claimed.append(running)
        if len(claimed) < limit and self._work.is_set():
            self._work = trio.Event()
        return claimed

    def has_ready(self, job_types: Collection[str] | None = None) -> bool:
        """Whether ``claim_nowait`` would find a job of ``job_types`` now."""
        if self._delayed:
            self._release_due()
        if self._best_queue(job_types) is not None:
            return True
        return bool(self._heads) and self._flow_pick(self._budgets(job_types)) is not None

    def save_and_claim_nowait(
        self, job: Job[Any], worker_id: str, job_types: Collection[str] | None = None
    ) -> Job[Any] | None:
        """Save a new job and claim it at once if it is the best ready job; else queue it.

        The runner's fast path for a job submitted while a slot is free: when no
        ready job of ``job_types`` would be claimed before it, the job goes straight
        to RUNNING, as ``save_nowait`` then ``claim_nowait`` would leave it.

        Returns:
            The claimed snapshot, or None when the job was queued instead.

        Raises:
            ValueError: a job with this id exists already.
        """
        if job.id in self._jobs:
            raise ValueError(f"a job with id {job.id!r} exists already")
        if (
            (job_types is not None and job.type not in job_types)
            or job.type in self._heads  # flow control decides: claim_nowait will
            or self.has_ready(job_types)
        ):
            self.save_nowait(job, wake=False)
            return None
        self._seq += 1  # the sequence number it would have queued under
        running = replace(job, status=_RUNNING, attempts=job.attempts + 1, started_at=utcnow())
        self._put(running)
        self._leases[job.id] = (worker_id, trio.current_time() + self._lease_duration)
        return running

    def _held(self, job_id: str, worker_id: str, attempt: int) -> Job[Any] | None:
        job = self._jobs.get(job_id)
        lease = self._leases.get(job_id)
        if (
            job is None
            or job.status is not _RUNNING
            or job.attempts != attempt
            or lease is None
            or lease[0] != worker_id
        ):
            return None
        return job

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
        """End an attempt if the claim is still held; see :meth:`JobStorage.settle`."""
        await trio.lowlevel.checkpoint()
        return self.settle_nowait(
            job_id,
            worker_id=worker_id,
            attempt=attempt,
            status=status,
            result=result,
            error=error,
            delay=delay,
            execution_time=execution_time,
        )

    def settle_nowait(
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
        """Like :meth:`settle`, without a checkpoint: the runner's fast path."""
        job = self._held(job_id, worker_id, attempt)
        if job is None:
            return False
        last_error = error if error is not None else job.last_error
        if status in _WAITING and job_id in self._cancel_requested:
            status = JobStatus.CANCELLED
        if status is JobStatus.COMPLETED:
            self._finish(
                job,
                status=status,
                result=result,
                completed_at=utcnow(),
                execution_time=execution_time,
            )
        elif status.is_final:
            self._finish(
                job,
                status=status,
                last_error=last_error,
                completed_at=utcnow(),
                execution_time=execution_time,
            )
        elif status is JobStatus.RETRYING:
            self._leases.pop(job_id, None)
            waiting = replace(
                job,
                status=status,
                last_error=last_error,
                run_at=utcnow() + timedelta(seconds=delay),
                execution_time=execution_time,
                progress=None,
                progress_message=None,
            )
            self._put(waiting)
            self._enqueue(waiting, delay)
        elif status is JobStatus.PENDING:
            self._leases.pop(job_id, None)
            back = replace(
                job,
                status=status,
                attempts=job.attempts - 1,
                progress=None,
                progress_message=None,
            )
            self._put(back)
            self._enqueue(back, 0.0)
        else:
            raise ValueError(f"cannot settle an attempt as {status}")
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
        """Store progress and merge metadata, if the claim is still held."""
        await trio.lowlevel.checkpoint()
        job = self._held(job_id, worker_id, attempt)
        if job is None:
            return False
        # Like the durable stores: None leaves the stored progress and message as they are.
        self._put(
            replace(
                job,
                progress=job.progress if progress is None else progress,
                progress_message=job.progress_message if message is None else message,
                metadata={**job.metadata, **metadata} if metadata else job.metadata,
            )
        )
        return True

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Renew the leases of ``job_ids`` still held by ``worker_id``; report the rest.

        A registered worker's row is renewed too. (Here the per-job leases are dict
        entries, renewed alongside: cheap in memory, and the same outcome as the
        durable stores' one-row renewal.)
        """
        await trio.lowlevel.checkpoint()
        expires = trio.current_time() + self._lease_duration
        row = self._workers.get(worker_id)
        # A row a rescue dropped (the worker stalled past its expiry) is put back.
        registered = row[0] if row is not None else self._registered.get(worker_id)
        if registered is not None:
            info = evolve(registered, last_seen=utcnow(), running=len(job_ids))
            self._workers[worker_id] = (info, expires)
        held: set[str] = set()
        for job_id in job_ids:
            lease = self._leases.get(job_id)
            if lease is not None and lease[0] == worker_id:
                self._leases[job_id] = (worker_id, expires)
                held.add(job_id)
        return Heartbeat(
            cancel_requested=frozenset(held & self._cancel_requested),
            lost=frozenset(set(job_ids) - held),
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover jobs whose lease expired; see :meth:`JobStorage.rescue_expired`."""
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        for worker_id, (_, expires) in list(self._workers.items()):
            if expires < now:
                del self._workers[worker_id]  # its jobs' leases expired with it
        rescued: list[Job[Any]] = []
        for job_id, (owner, expires) in list(self._leases.items()):
            if expires >= now:
                continue
            job = self._jobs[job_id]
            error = worker_lost_error(owner, job.attempts)
            if job_id in self._cancel_requested:
                new = self._finish(job, status=JobStatus.CANCELLED, completed_at=utcnow())
            elif job.attempts >= job.max_attempts:
                new = self._finish(
                    job, status=JobStatus.FAILED, last_error=error, completed_at=utcnow()
                )
            else:
                del self._leases[job_id]
                new = replace(
                    job,
                    status=JobStatus.PENDING,
                    last_error=error,
                    progress=None,
                    progress_message=None,
                )
                self._put(new)
                self._enqueue(new, 0.0)
            rescued.append(new)
        return rescued

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a waiting job at once, or flag a running one for its worker."""
        await trio.lowlevel.checkpoint()
        job = self._jobs.get(job_id)
        if job is None or job.status.is_final:
            return CancelOutcome.NOTHING
        if job.status is _RUNNING:
            self._cancel_requested.add(job_id)
            self._cancel_signal.set()
            return CancelOutcome.REQUESTED
        self._finish(job, status=JobStatus.CANCELLED, completed_at=utcnow())
        return CancelOutcome.CANCELLED

    # -- the workers table (WorkerRegistry) ------------------------------------------

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the worker's row; its lease starts now (Trio clock)."""
        await trio.lowlevel.checkpoint()
        row = evolve(info, last_seen=utcnow())
        self._workers[info.worker_id] = (row, trio.current_time() + self._lease_duration)
        self._registered[info.worker_id] = row

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row."""
        await trio.lowlevel.checkpoint()
        self._workers.pop(worker_id, None)
        self._registered.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers (row not expired), oldest start first."""
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        live = [info for info, expires in self._workers.values() if expires >= now]
        return sorted(live, key=lambda info: (info.started_at, info.worker_id))

    # -- waiting ---------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job is saved or a delay ends, or after ``timeout`` seconds.

        ``timeout=math.inf`` waits for a change only, which is all a caller needs:
        this store sees every change.
        """
        # Jobs already ready are not a reason to return: the caller just claimed what
        # it could, and the rest may be of types it does not handle (returning would
        # make it spin). New work sets the event; due delays end the wait below.
        if self._delayed and self._release_due():
            await trio.lowlevel.checkpoint()
            return
        deadline = trio.current_time() + timeout
        if self._delayed:
            deadline = min(deadline, self._delayed[0][0])
        if self._heads:
            deadline = min(deadline, self._flow_deadline())
        if deadline == math.inf:
            await self._work.wait()  # no cancel scope: this is the runner's idle path
        else:
            with trio.move_on_at(deadline):
                await self._work.wait()

    def wake(self) -> None:
        """Wake tasks in :meth:`wait_for_work`."""
        self._work.set()

    async def wait_for_cancel_request(self, timeout: float) -> None:
        """Return when a running job's cancellation is requested, or after ``timeout``."""
        with trio.move_on_after(timeout):
            await self._cancel_signal.wait()
        if self._cancel_signal.is_set():
            self._cancel_signal = trio.Event()

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` changes, or after ``timeout`` seconds."""
        watcher = self._watchers.get(job_id)
        if watcher is None:
            watcher = self._watchers[job_id] = trio.Event()
        with trio.move_on_after(timeout):
            await watcher.wait()

    # -- counting --------------------------------------------------------------------

    # The administration (get_stats, get_by_status, list_jobs, waiting_by_type,
    # job_ids_starting_with, update, mark_running, delete, requeue, purge) is
    # MemoryAdmin's, in _memory_admin; count_unfinished stays here, as the runner's
    # drain asks it.

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Count jobs that are PENDING, RETRYING or RUNNING."""
        await trio.lowlevel.checkpoint()
        by_type = self._unfinished_by_type
        if job_types is None:
            return sum(by_type.values())
        return sum(by_type[t] for t in job_types)
