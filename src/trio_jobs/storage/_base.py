"""The storage protocol: what the runner asks of a store, and the rules a store keeps.

A store holds jobs and moves them between statuses. The runner never changes a
job's status itself; it asks the store, and every change a worker makes to a job
it runs is *fenced*: it applies only while the worker still holds that attempt's
claim (same ``job_id``, ``status = running``, same ``attempt``, same
``worker_id``). A worker whose lease expired, and whose job was rescued and
claimed again elsewhere, therefore cannot overwrite the newer attempt's state.

Life of a job in a store::

    save() ──► PENDING ──claim()──► RUNNING ──settle(COMPLETED/FAILED/TIMEOUT/CANCELLED)
                  ▲                   │  │
                  │                   │  └─settle(RETRYING, delay)──► RETRYING ──(delay)──┐
                  └──settle(PENDING)──┘                                                  │
                  └──rescue_expired() (lease ran out; attempt counted)     claim() ◄─────┘

Time: ``delay`` arguments are seconds from now. The in-memory store keeps them on
the Trio clock (so ``MockClock`` drives them); durable stores keep ``run_at`` in
the database (wall clock; PostgreSQL uses the server's clock). Leases are measured
the same way.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from .._flow import HeldBack, JobTypeLimits, tenant_key
from .._records import ErrorInfo, Job, JobStats, JobStatus, Schedule, WorkerInfo, utcnow

#: The statuses in which a job holds its ``unique_key`` (a delayed job is PENDING).
ACTIVE_STATUSES: Final = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.RETRYING})


class CancelOutcome(enum.Enum):
    """What :meth:`JobStorage.request_cancel` did."""

    #: Nothing changed (an unknown id, or a job already final).
    NOTHING = "nothing"
    #: The job was pending or retrying and is now ``CANCELLED``.
    CANCELLED = "cancelled"
    #: The job is running; the request is recorded for its worker to act on.
    REQUESTED = "requested"


@attrs.frozen
class Heartbeat:
    """What a worker learns from :meth:`JobStorage.heartbeat`.

    Attributes:
        cancel_requested: Ids of this worker's running jobs that someone asked to cancel.
        lost: Ids the worker said it holds but no longer does (its lease expired and
            the job was rescued, or the job was deleted): stop working on them,
            their writes will be refused anyway.
    """

    cancel_requested: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()


@runtime_checkable
class JobStorage(Protocol):
    """Where jobs live. :class:`MemoryStorage` is the default; see the module docs.

    All methods are async and checkpoint. Methods that take ``job_types`` consider
    only jobs of those types (``None``: all types).
    """

    @property
    def lease_duration(self) -> float:
        """Seconds a claim stays valid without a heartbeat."""
        ...

    async def open(self) -> None:
        """Make the store ready (connect, create or migrate tables). Idempotent."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...

    # -- the seed's methods -------------------------------------------------------

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Insert a new job. It becomes claimable ``delay`` seconds from now.

        Raises:
            TypeError: a durable store cannot encode the payload or metadata (the
                message names the field); nothing is stored.
            ValueError: a job with this id exists already.
        """
        ...

    async def update(self, job: Job[Any]) -> None:
        """Overwrite a job's record unconditionally (administrative; not fenced)."""
        ...

    async def get(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        ...

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Return (without claiming) up to ``limit`` ready jobs in claim order."""
        ...

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Return jobs with ``status``, oldest first."""
        ...

    async def mark_running(self, job_id: str) -> bool:
        """Move one job from PENDING to RUNNING; True only for the caller that did it.

        The seed's claim, kept for compatibility: it takes no lease, so a crash
        of the caller leaves the job RUNNING forever. Workers use :meth:`claim`.
        """
        ...

    async def delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed."""
        ...

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Count jobs by status."""
        ...

    # -- claims, leases, fenced writes --------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Atomically claim up to ``limit`` ready jobs for ``worker_id``.

        Ready means PENDING or RETRYING with its delay passed. Order: priority
        (highest first), then ``run_at``, then insertion order. Each claimed job
        becomes RUNNING with ``attempts + 1``, ``started_at`` set, and a lease of
        :attr:`lease_duration` held by ``worker_id`` (on a store with a workers
        table, a registered worker's heartbeat renews its row instead, which
        covers all its claims: see :class:`WorkerRegistry`). Returns the claimed
        snapshots; never more than ``limit``, and no job is claimed by two callers.
        """
        ...

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
        """End an attempt, fenced: applies only while the claim is still this worker's.

        ``status`` says how the attempt ended:

        - ``COMPLETED``: store ``result``; set ``completed_at``.
        - ``FAILED`` / ``TIMEOUT`` / ``CANCELLED``: final; store ``error`` as
          ``last_error`` (when given); set ``completed_at``.
        - ``RETRYING``: store ``error``; claimable again after ``delay`` seconds.
        - ``PENDING``: give the job back (orderly shutdown): claimable at once and
          the attempt is *not* counted (``attempts - 1``).

        The lease is dropped in every case. A pending cancellation request on a job
        settled as RETRYING or PENDING turns it CANCELLED instead. A job settled as
        RETRYING or PENDING loses its ``progress`` and ``progress_message``: they
        belonged to the attempt that ended, and the next one starts from nothing.

        Returns:
            True when applied; False when the claim was no longer held.

        Raises:
            TypeError: a durable store cannot encode ``result``; nothing changed.
        """
        ...

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
        """Store progress and merge ``metadata`` into the job's, fenced like :meth:`settle`."""
        ...

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Renew the leases of ``job_ids`` that ``worker_id`` still holds, in one write.

        Also reports which of them someone asked to cancel, and which are no
        longer held (lost).
        """
        ...

    async def rescue_expired(self) -> list[Job[Any]]:
        """Recover jobs whose lease expired (their worker died). Safe to run concurrently.

        Each such job's crashed attempt stays counted. With attempts left it goes
        back to PENDING (its progress cleared); with none left it ends FAILED with
        an error saying the worker was lost; if cancellation was requested it ends
        CANCELLED.

        Returns:
            The rescued jobs' new snapshots.
        """
        ...

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a pending or retrying job at once, or flag a running one for its worker."""
        ...

    # -- waiting ------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable, or after ``timeout`` seconds.

        Spurious returns are fine; the caller claims and waits again. The memory
        store returns when a job is saved or its delay ends; durable stores return
        on a local save, a notification, or the timeout (their poll).
        """
        ...

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Return when ``job_id`` may have changed, or after ``timeout`` seconds."""
        ...

    # -- administration (CLI, JobClient) ------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return jobs, newest first, filtered by status and type."""
        ...

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Count jobs that are PENDING, RETRYING or RUNNING."""
        ...

    async def requeue(self, job_id: str) -> bool:
        """Give a FAILED, TIMEOUT or CANCELLED job a fresh start (PENDING, attempts 0).

        Returns:
            True if requeued; False for an unknown job or one in another status.

        Raises:
            ValueError: the job has a ``unique_key`` that another, active job
                (pending, running or retrying) holds now; nothing changes. The
                message names the key and that job.
        """
        ...

    async def purge(
        self, older_than: float, *, statuses: Collection[JobStatus] | None = None
    ) -> int:
        """Delete final jobs completed more than ``older_than`` seconds ago; return how many.

        ``statuses`` (final statuses only) narrows it; ``None`` means every final one.
        """
        ...


@runtime_checkable
class WorkerRegistry(Protocol):
    """What a store with a workers table adds: one row per live runner.

    Optional: the runner uses it when its store has it (all three built-in stores
    do). With it, liveness is judged per worker, not per job:

    - :meth:`register_worker` writes the runner's row at start (and again when its
      job types change); from then on :meth:`JobStorage.heartbeat` renews that
      one row (``last_seen``, ``running``, and an expiry ``lease_duration`` ahead,
      by the heartbeating process's own ``lease_duration``) instead of every job
      it holds, and still reports the cancel requests and lost claims among the
      ids it is given;
    - :meth:`JobStorage.rescue_expired` rescues the running jobs of workers whose
      row expired (and drops those rows), and, as before, running jobs claimed by
      a worker without a row whose own lease expired. Its cost depends on the
      stale workers' jobs, not on how many jobs live workers run;
    - a row that a rescuer dropped while its worker stalled (past its expiry) is
      written back by that worker's next :meth:`JobStorage.heartbeat`, when the
      worker was registered through the same store object; the stalled worker's
      jobs were rescued meanwhile and are reported lost. Until then its claims
      are those of a worker without a row: each on a lease of its own;
    - :meth:`unregister_worker` drops the row when the runner leaves its block.
    """

    async def register_worker(self, info: WorkerInfo) -> None:
        """Insert or replace the row of ``info.worker_id``; its lease starts now."""
        ...

    async def unregister_worker(self, worker_id: str) -> None:
        """Delete the worker's row (its runner stopped cleanly). Idempotent."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """Return the live workers (whose row has not expired), oldest start first."""
        ...


@runtime_checkable
class FlowControl(Protocol):
    """What a store that enforces flow control adds: per-type limits, pauses, weights.

    All three built-in stores implement it. The settings are stored, so every
    runner on the store obeys them, and :meth:`JobStorage.claim` enforces them:
    it never starts more attempts of a type than ``max_running`` allows in total,
    nor more than ``max_running_per_tenant`` for one tenant, nor more than
    ``rate[0]`` starts in any ``rate[1]``-second window, nor any of a paused type.
    Running attempts are counted from the jobs themselves. A job held back stays
    PENDING and holds up no job of another type or tenant.

    A store may also have ``next_start_in(job_type) -> float | None``: the seconds
    until the type's rate window lets one more attempt start (None: no rate).
    :func:`~trio_jobs.storage.held_back_jobs` reports it when the store has it; it
    is optional, so a custom store implementing this protocol need not add it.
    """

    async def set_limits(self, limits: JobTypeLimits) -> None:
        """Store the limits of ``limits.job_type`` (all but ``paused``, which stays)."""
        ...

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the stored settings of ``job_type`` (defaults when none are stored)."""
        ...

    async def all_limits(self) -> list[JobTypeLimits]:
        """Return the settings of every type that has any, by type."""
        ...

    async def set_paused(self, job_type: str, paused: bool) -> None:
        """Pause or resume claims of ``job_type``; running attempts are not touched."""
        ...

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Store a tenant's weight in fair turns (the default is 1.0)."""
        ...

    async def flow_usage(self, job_type: str) -> tuple[int, int, dict[str, int]]:
        """``(running, starts in the rate window, running per tenant)`` of ``job_type``."""
        ...


@runtime_checkable
class InProcessStorage(JobStorage, Protocol):
    """A store living in this process, whose operations never block.

    It sees every change (nothing happens to its jobs elsewhere), so the runner
    waits on it without polling, and it offers checkpoint-free variants of the
    calls on the runner's hot path. :class:`MemoryStorage` is one.
    """

    def save_nowait(self, job: Job[Any], *, delay: float = 0.0, wake: bool = True) -> None:
        """:meth:`JobStorage.save`, without a checkpoint; ``wake=False`` wakes no waiter."""
        ...

    def claim_nowait(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """:meth:`JobStorage.claim`, without a checkpoint."""
        ...

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
        """:meth:`JobStorage.settle`, without a checkpoint."""
        ...

    def wake(self) -> None:
        """Wake tasks in :meth:`wait_for_work` (e.g. a runner gained a handler)."""
        ...

    def has_ready(self, job_types: Collection[str] | None = None) -> bool:
        """Whether :meth:`claim_nowait` would find a job of ``job_types`` now."""
        ...

    def save_and_claim_nowait(
        self, job: Job[Any], worker_id: str, job_types: Collection[str] | None = None
    ) -> Job[Any] | None:
        """Save a new job; claim it at once if no ready job would go before it.

        Returns the claimed (RUNNING) snapshot, or None when the job was queued.
        """
        ...


def flow_control(store: JobStorage) -> FlowControl:
    """``store`` as a :class:`FlowControl` store.

    Raises:
        NotImplementedError: the store does not implement flow control.
    """
    if not isinstance(store, FlowControl):
        raise NotImplementedError(
            f"{type(store).__name__} keeps no flow-control settings (it does not implement "
            "trio_jobs.storage.FlowControl)"
        )
    return store


@runtime_checkable
class BatchStorage(Protocol):
    """What a store with batches and unique keys adds (all three built-in stores)."""

    async def save_many(self, jobs: Sequence[Job[Any]], *, delay: float = 0.0) -> list[str]:
        """Insert new jobs in one transaction: all of them, or none.

        A job whose ``unique_key`` an active job (pending, running, retrying)
        holds already, or an earlier job of the same call, is not stored. Race
        free: the store's constraint decides, not a read before the write.

        Returns:
            For each job, in order, the id of the job that holds it: its own id,
            or the id of the active job with its ``unique_key``.

        Raises:
            TypeError: a durable store cannot encode a payload or metadata;
                nothing is stored.
            ValueError: a job with one of these ids exists already; nothing is stored.
        """
        ...


@runtime_checkable
class ScheduleStorage(Protocol):
    """What a store with periodic jobs adds: schedule rows, and ticks enqueued once."""

    async def put_schedule(self, schedule: Schedule) -> None:
        """Insert or replace a schedule's definition (its ``last_run_at`` is kept)."""
        ...

    async def list_schedules(self) -> list[Schedule]:
        """Return the stored schedules by key (``next_run_at`` is ``None``: computed by callers)."""
        ...

    async def enqueue_tick(
        self, key: str, tick: datetime, job: Job[Any], *, delay: float = 0.0
    ) -> bool:
        """Record the tick ``(key, tick)`` and save ``job``, in one transaction.

        The ticks of a key are taken in order: of every runner that tries the same
        tick, exactly one stores its job; the others store nothing, and so does
        anyone trying a tick at or before the newest one taken (a runner that
        backfills late, or lags behind another). So a store need keep only the
        newest tick of each key, and does: the table of ticks never grows.

        Returns:
            True when this call stored the job; False when the tick was taken, or
            is not after the newest one taken.
        """
        ...


@runtime_checkable
class RetentionStorage(Protocol):
    """What a store with retention adds: deleting old final jobs in bounded batches."""

    async def purge_batch(
        self, status: JobStatus, older_than: float, *, limit: int, holder: str
    ) -> int | None:
        """Delete up to ``limit`` jobs of final ``status`` completed over ``older_than`` s ago.

        At most one ``holder`` (a runner) trims a store at a time: an advisory lock
        or a lease row, taken for the batch.

        Returns:
            How many jobs were deleted, or ``None`` when another holder trims now.
        """
        ...


async def _rate_wait(store: FlowControl, limits: JobTypeLimits) -> float | None:
    """The store's ``next_start_in`` for a type with a rate, if it has that method."""
    next_start_in = getattr(store, "next_start_in", None)
    if limits.rate is None or not callable(next_start_in):
        return None
    wait: float | None = await next_start_in(limits.job_type)
    return wait


async def held_back_types(store: JobStorage) -> dict[str, HeldBack]:
    """Which job types a flow limit holds back now, and by what, by type.

    A type is held back when no attempt of it may start now, whatever its tenant:
    it is paused, at ``max_running``, or out of ``rate`` starts in the window.
    (``max_running_per_tenant`` holds back jobs, not types: see
    :func:`held_back_jobs`.) A store without flow control holds nothing back.
    """
    if not isinstance(store, FlowControl):
        return {}
    found: dict[str, HeldBack] = {}
    for limits in await store.all_limits():
        running, recent, _ = await store.flow_usage(limits.job_type)
        wait = await _rate_wait(store, limits)
        held = HeldBack.of(limits, running, recent, None, next_start_in=wait)
        if held is not None:
            found[limits.job_type] = held
    return found


def _is_ready(job: Job[Any], now: datetime) -> bool:
    """Whether ``job`` waits for nothing but a worker: PENDING or RETRYING, and due."""
    due = job.run_at is None or job.run_at <= now
    return job.status in (JobStatus.PENDING, JobStatus.RETRYING) and due


async def held_back_jobs(store: JobStorage, jobs: Iterable[Job[Any]]) -> dict[str, HeldBack]:
    """Which of ``jobs`` a flow limit holds back now, and by what, by job id.

    A job is held back when it is ready (PENDING or RETRYING, its ``run_at``
    passed) but its type is paused, at ``max_running``, out of ``rate`` starts in
    the window, or its tenant is at ``max_running_per_tenant``. A job that merely
    waits for a free worker is not held back. The stores are read once per job
    type. A store without flow control holds nothing back.
    """
    if not isinstance(store, FlowControl):
        return {}
    now = utcnow()
    usage: dict[str, tuple[JobTypeLimits, int, int, dict[str, int], float | None]] = {}
    found: dict[str, HeldBack] = {}
    for job in jobs:
        if not _is_ready(job, now):
            continue
        if job.type not in usage:
            limits = await store.get_limits(job.type)
            if not limits.active:
                usage[job.type] = (limits, 0, 0, {}, None)
            else:
                running, recent, tenants = await store.flow_usage(job.type)
                wait = await _rate_wait(store, limits)
                usage[job.type] = (limits, running, recent, tenants, wait)
        limits, running, recent, tenants, wait = usage[job.type]
        if not limits.active:
            continue
        held = HeldBack.of(
            limits,
            running,
            recent,
            tenants.get(tenant_key(job.tenant_id), 0),
            tenant_id=job.tenant_id,
            next_start_in=wait,
        )
        if held is not None:
            found[job.id] = held
    return found


async def list_workers(store: JobStorage) -> list[WorkerInfo]:
    """``store.workers()`` for a store with a workers table.

    Raises:
        NotImplementedError: the store is no :class:`WorkerRegistry`.
    """
    if not isinstance(store, WorkerRegistry):
        raise NotImplementedError(
            f"{type(store).__name__} keeps no workers table (it does not implement "
            "trio_jobs.WorkerRegistry)"
        )
    return await store.workers()


def stats_from_rows(rows: Iterable[Sequence[Any]]) -> JobStats:
    """Build :class:`JobStats` from ``(status, count, average execution time)`` rows."""
    counts: dict[str, int] = {}
    average: float | None = None
    for status, count, avg in rows:
        counts[status] = int(count)
        if status == JobStatus.COMPLETED.value and avg is not None:
            average = float(avg)
    return JobStats(
        **{s.value: counts.get(s.value, 0) for s in JobStatus},
        total_processed=sum(counts.get(s.value, 0) for s in JobStatus if s.is_final),
        average_execution_time=average,
    )


def pop_due(due: list[float], now: float) -> bool:
    """Drop the times in the heap ``due`` that have come by ``now``; True if any had."""
    popped = False
    while due and due[0] <= now:
        heapq.heappop(due)
        popped = True
    return popped


def key_held(job_id: str, key: str, holder: str | None) -> str:
    """The message of a requeue refused because an active job holds ``job_id``'s key."""
    by = f"active job {holder}" if holder is not None else "an active job"
    return (
        f"job {job_id} cannot run again: its unique_key {key!r} is held by {by}"
        " (retry it once that job is final)"
    )
