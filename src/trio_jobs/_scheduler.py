"""The engine inside a runner: claims jobs, runs each attempt in its own task, settles it.

:class:`JobRunner` is the public face (lifecycle, submit, reads, events); this
module is the work. Its rule is Trio's own: **one task owns each attempt from
claim to settle**, and gives back everything the attempt holds — its concurrency
slot, its entry in the index of live attempts, its lease — in ``finally``, on
every path (return, raise, cancellation, ``KeyboardInterrupt``). Nothing here
waits on bookkeeping that only the happy path keeps.

- The **scheduler task** (:meth:`Scheduler.run`) claims the best ready jobs
  whenever a slot is free and hands each to a new attempt task. A claim answered
  after :meth:`Scheduler.stop_claiming` still becomes an attempt task, which gives
  its job back (PENDING, attempt not counted) instead of running it.
- **Attempt tasks** (:meth:`Scheduler._attempt_task`) run the handler in the
  attempt's :class:`trio.CancelScope` (deadline: the job's timeout), then hand
  its end to the scheduler's ``Outcomes`` (``_attempt``), which judges the
  outcome (``_outcome``) and writes it with the store's fenced ``settle``,
  shielded and retried with backoff while the lease holds.
- The **services task** (:meth:`Scheduler.run_services`) renews leases, relays
  cancellation requests, and rescues other workers' expired leases. On a durable
  store a watchdog beside it, the *fence* (:meth:`Scheduler._run_fences`),
  cancels any attempt whose lease would run out unrenewed, before it does: a
  runner that cannot renew a lease stops that attempt itself before anyone could
  rescue and rerun the job.

"Idle" is :attr:`Scheduler.busy`, a count of live attempt tasks one can wait on
(a trio-util ``AsyncValue``, kept in step while anyone waits on it). User code
(handlers, event callbacks, retry predicates) never runs inside the synchronous
bookkeeping, which is short and protected from ``KeyboardInterrupt``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, final

import outcome
import trio
from trio_util import AsyncValue

from ._attempt import Attempt, Outcomes
from ._context import JobContext
from ._events import EventHub
from ._exceptions import StorageCorruptError
from ._middleware import Middleware, call_with_middleware
from ._records import Job, JobStatus, WorkerInfo, utcnow
from ._retry import RetryConfig
from ._tracing import attempt_span
from .storage._base import InProcessStorage, JobStorage, WorkerRegistry

Handler = Callable[[Job[Any], JobContext[Any]], Awaitable[Any]]

#: A fence cancels an attempt this fraction of the lease before the lease runs out.
_FENCE_MARGIN = 0.2
#: The longest pause between claims while the store keeps failing (seconds).
_CLAIM_BACKOFF_CAP = 30.0

#: The scheduler whose attempt the current task runs (inherited by a handler's tasks):
#: how ``stop()`` called from inside a handler knows not to wait for its caller.
_RUNNING_IN: ContextVar[Scheduler | None] = ContextVar("trio_jobs_running_in", default=None)


@final
class Scheduler:
    """Claims and runs jobs for one runner; see the module docs."""

    def __init__(
        self,
        *,
        storage: JobStorage,
        handlers: dict[str, Handler],
        concurrency: int,
        caps: dict[str, int] | None = None,
        poll_interval: float,
        default_retry: RetryConfig,
        events: EventHub,
        logger: logging.Logger,
        worker_id: str,
        hostname: str,
        pid: int,
        middleware: tuple[Middleware, ...] = (),
    ) -> None:
        self._storage = storage
        self._middleware = middleware
        self._registry = storage if isinstance(storage, WorkerRegistry) else None
        self._hostname = hostname
        self._pid = pid
        self._started_at = utcnow()
        #: The job types in our workers-table row (None: no row written).
        self._registered: frozenset[str] | None = None
        # An in-process store sees every change and never blocks: the scheduler waits
        # on it without polling, writes through its checkpoint-free calls, and needs
        # no fence (its leases cannot fail to renew).
        self._in_process = storage if isinstance(storage, InProcessStorage) else None
        self._handlers = handlers
        self._concurrency = concurrency
        #: ``register_handler(..., concurrency=N)``: at most N attempts of a type here.
        self._caps: dict[str, int] = caps if caps is not None else {}
        #: Attempts of each capped type holding a slot (kept with the slot: _new_attempt,
        #: _release_slot).
        self._capped_running: dict[str, int] = {}
        #: Cancelled when a capped type gets a slot back while the claim loop waits.
        self._cap_scope: trio.CancelScope | None = None
        self._poll_interval = poll_interval
        self._events = events
        self._logger = logger
        self._worker_id = worker_id
        self._lease = storage.lease_duration
        self._margin = self._lease * _FENCE_MARGIN
        #: The job types to claim (those with a handler).
        self.types: frozenset[str] = frozenset()
        self.nursery: trio.Nursery | None = None
        #: Whether new attempts may start.
        self.accepting = True
        #: Live attempt tasks, less those waiting inside ``stop()``: "idle" is 0.
        self.busy = 0
        # The same count, to wait on; updated only while someone waits (two setter
        # calls per job on the hot path otherwise, for nobody).
        self._busy_value: AsyncValue[int] = AsyncValue(0)
        self._busy_waiters = 0
        self._live = 0  # every live attempt task, for when services may stop
        self._in_handlers = 0  # attempts holding a slot
        #: The newest live attempt of each job, by job id (an older one is its ``previous``).
        self._attempts: dict[str, Attempt] = {}
        #: Whether the last claim found fewer ready jobs than it asked for.
        self.store_dry = False
        self._slot_freed = trio.lowlevel.ParkingLot()
        #: Woken whenever an attempt ends (or the runner stopped): for ``join()``.
        self.settled = trio.lowlevel.ParkingLot()
        self._force = False
        self._scheduler_scope = trio.CancelScope()
        self._scheduler_done: trio.Event | None = None
        self._services_scope = trio.CancelScope()
        self._services_wanted = True
        #: In-process stores: attempt tasks parked between attempts, ready for the next.
        self._idle_tasks: list[trio.lowlevel.Task] = []
        #: Why the store cannot be used any more (the runner ends with it).
        self._fatal_error: StorageCorruptError | None = None
        #: Judges and writes each attempt's end; keeps what the next attempt needs.
        self._outcomes = Outcomes(
            storage=storage,
            default_retry=default_retry,
            events=events,
            logger=logger,
            worker_id=worker_id,
            margin=self._margin,
            report_error=self._report_error,
            fatal=self._fatal,
        )

    # -- what the runner asks of it --------------------------------------------------

    def remember_policy(self, job: Job[Any]) -> None:
        """Keep a job's retry predicate, which a durable store cannot keep."""
        self._outcomes.remember_policy(job)

    def local_error(self, job_id: str) -> BaseException | None:
        """The original exception of a job that failed in this process, if kept."""
        return self._outcomes.local_error(job_id)

    def cancel_job(self, job_id: str) -> bool | None:
        """Cancel the job's attempt here: True if its handler was interrupted.

        False when the handler has already returned (its outcome stands), None when
        no attempt of the job is live in this runner.
        """
        attempt = self._attempts.get(job_id)
        if attempt is None:
            return None
        if not attempt.handler_running:
            return False
        self._cancel_attempt(attempt, "cancel")
        return True

    def stop_claiming(self) -> None:
        """Start nothing new; a claim in flight gives its jobs back."""
        self.accepting = False
        self._scheduler_scope.cancel()
        idle, self._idle_tasks = self._idle_tasks, []
        for task in idle:
            trio.lowlevel.reschedule(task, outcome.Value(None))  # "no more work": exit

    def force_stop(self) -> None:
        """Cancel every running attempt; their jobs go back to PENDING, uncounted."""
        if self._force:
            return
        self._force = True
        for newest in list(self._attempts.values()):
            attempt: Attempt | None = newest
            while attempt is not None:
                self._cancel_attempt(attempt, "stop")
                attempt = attempt.previous

    async def wait_until_stopped_claiming(self) -> None:
        """Wait for the scheduler task to end (after :meth:`stop_claiming`)."""
        if self._scheduler_done is not None:
            await self._scheduler_done.wait()

    def called_from_an_attempt(self) -> bool:
        """Whether the calling task runs (inside) one of this scheduler's attempts."""
        return _RUNNING_IN.get() is self

    async def wait_until_idle(self) -> None:
        """Wait until no attempt task is alive, except the caller's own.

        Called from inside a handler (``stop()`` from a job), the calling attempt
        does not count, or it would wait for itself.
        """
        inside = self.called_from_an_attempt()
        self._busy_waiters += 1
        if inside:
            self.busy -= 1
        self._busy_value.value = self.busy
        try:
            await self._busy_value.wait_value(0)
        finally:
            self._busy_waiters -= 1
            if inside:
                self.busy += 1
            self._busy_value.value = self.busy

    def set_types(self, types: frozenset[str]) -> None:
        """Claim jobs of ``types`` from now on: at once, since some may be waiting already."""
        self.types = types
        if self._cap_scope is not None:
            self._cap_scope.cancel()  # an idle wait would not hear of jobs stored before

    def stop_services(self) -> None:
        """Stop renewing leases once no attempt is alive (at once if none is)."""
        self._services_wanted = False
        if self._live == 0:
            self._services_scope.cancel()
        if self.settled:
            self.settled.unpark_all()

    # -- the workers table -----------------------------------------------------------

    def _worker_info(self, running: int) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self._worker_id,
            hostname=self._hostname,
            pid=self._pid,
            started_at=self._started_at,
            last_seen=utcnow(),
            concurrency=self._concurrency,
            running=running,
            job_types=self.types,
        )

    async def register(self) -> None:
        """Write this runner's row in the store's workers table, if the store keeps one."""
        if self._registry is not None:
            self._started_at = utcnow()
            types = self.types
            await self._registry.register_worker(self._worker_info(0))
            self._registered = types

    async def unregister(self) -> None:
        """Drop this runner's row (at exit, once no attempt is alive); never raises.

        A row is left to expire instead when a claim may still be RUNNING in the
        store (a write given up, a fenced attempt): the store's rescue then takes
        those jobs, as for a worker that died.
        """
        if self._registry is None or self._registered is None:
            return
        unsettled = self._outcomes.unsettled_claims
        if unsettled:
            self._logger.warning(
                "leaving this worker's row to expire: %d claim(s) may still be running "
                "in the store; they will be rescued",
                unsettled,
            )
            return
        with trio.move_on_after(self._lease) as scope:
            try:
                await self._registry.unregister_worker(self._worker_id)
            except Exception as exc:
                self._logger.warning("removing this worker's row failed: %r", exc)
        if scope.cancelled_caught:
            self._logger.warning("removing this worker's row timed out; it will expire")

    # -- the scheduler ---------------------------------------------------------------

    def _free_slots(self) -> int:
        """How many jobs to claim now: free slots, less any backlog of outcome writes.

        A slot frees when its handler returns, before the outcome is written, so
        the next claim overlaps the write; but at most one round of writes may be
        in flight, or a slow store would let claims run far ahead of it.
        """
        writing = self._live - self._in_handlers
        backlog = max(0, writing - self._concurrency)
        return self._concurrency - self._in_handlers - backlog

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler task: claim whenever a slot is free, start an attempt per job."""
        self._scheduler_done = done = trio.Event()
        try:
            with self._scheduler_scope:
                task_status.started()
                await self._claim_loop()
        finally:
            done.set()
        if self._fatal_error is not None:
            # The one task that raises it: the runner's block ends with this error.
            raise self._fatal_error

    async def _claim_loop(self) -> None:
        storage = self._storage
        claim_nowait = self._in_process.claim_nowait if self._in_process is not None else None
        idle_wait = math.inf if claim_nowait is not None else self._poll_interval
        # A store that can claim the moment work is announced (PostgresStorage).
        wait_and_claim: Callable[..., Awaitable[list[Job[Any]] | None]] | None = getattr(
            storage, "wait_and_claim", None
        )
        failures = 0
        while True:
            free = self._free_slots()
            if free <= 0:
                await self._slot_freed.park()
                continue
            handled = self.types
            types, free = self._claimable(free)
            if not types and handled:
                # Every type we handle is at its concurrency= cap here.
                await self._slot_freed.park()
                continue
            sent = trio.current_time()
            try:
                if claim_nowait is not None:
                    # Never blocks; the loop checkpoints when it parks or waits,
                    # which it does at the latest on the next turn.
                    jobs = claim_nowait(self._worker_id, free, types)
                else:
                    jobs = await storage.claim(self._worker_id, free, types)
            except StorageCorruptError as exc:
                self._fatal(exc)  # nothing to wait for: the runner stops, and says why
                return
            except Exception as exc:
                failures += 1
                await trio.sleep(self._store_failed("claiming jobs", exc, failures))
                continue
            if failures:
                self._logger.warning("claiming jobs works again after %d failures", failures)
                failures = 0
            was_dry, self.store_dry = self.store_dry, len(jobs) < free
            if self.store_dry and not was_dry and self.settled:
                # join() may have looked between the last settle and this answer.
                self.settled.unpark_all()
            if jobs:
                self._start_all(jobs, None if claim_nowait is not None else sent)
                continue
            if self.types is not handled:
                continue  # a handler was registered while the claim was out: claim again
            # A capped type getting a slot back, or a new handler, ends the wait
            # (their jobs may be waiting).
            with trio.CancelScope() as self._cap_scope:
                if wait_and_claim is not None:
                    sent = trio.current_time()
                    jobs = await wait_and_claim(self._worker_id, free, types, idle_wait) or []
                    if jobs:
                        self._start_all(jobs, sent)
                else:
                    await storage.wait_for_work(idle_wait)
            self._cap_scope = None

    def _claimable(self, free: int) -> tuple[frozenset[str], int]:
        """The types to claim now and how many jobs at most, under the ``concurrency=`` caps.

        A claim may not take more jobs of a capped type than its room here, so with
        caps the claim asks for at most the smallest room among the capped types it
        includes (the loop claims again at once when that came back full).
        """
        caps = self._caps
        if not caps:
            return self.types, free
        running = self._capped_running
        types = []
        for job_type in self.types:
            cap = caps.get(job_type)
            if cap is not None:
                room = cap - running.get(job_type, 0)
                if room <= 0:
                    continue
                free = min(free, room)
            types.append(job_type)
        if len(types) == len(self.types):
            return self.types, free
        return frozenset(types), free

    @trio.lowlevel.enable_ki_protection
    def submit_in_process(self, store: InProcessStorage, job: Job[Any], delay: float) -> None:
        """Save a job submitted here; start it at once if a slot is free and it is the best.

        That spares waking the scheduler task for every job submitted.
        """
        types, free = self._claimable(self._free_slots())
        if delay or not self.accepting or free <= 0:
            store.save_nowait(job, delay=delay, wake=False)
            if not delay:
                store.wake()  # for the scheduler task, when a slot frees
            return
        running = store.save_and_claim_nowait(job, self._worker_id, types)
        if running is None:
            # Queued behind better jobs: start those (the scheduler would).
            self._start_all(store.claim_nowait(self._worker_id, free, types))
            store.wake()  # the scheduler claims the rest, if the caps held a claim short
        else:
            self._start_all([running])

    @trio.lowlevel.enable_ki_protection
    def _start_all(self, jobs: list[Job[Any]], sent: float | None = None) -> None:
        """Hand each claimed job to its own attempt task (which owns it from here on).

        ``sent`` is when the claim was sent (the lease started no earlier); None
        means now.
        """
        assert self.nursery is not None
        now = trio.current_time() if sent is None else sent
        idle = self._idle_tasks
        for job in jobs:
            attempt = self._new_attempt(job, now)
            if idle:
                # A parked attempt task takes it: cheaper than a new task.
                trio.lowlevel.reschedule(idle.pop(), outcome.Value(attempt))
            else:
                self.nursery.start_soon(self._attempt_task, attempt)

    def _new_attempt(self, job: Job[Any], now: float) -> Attempt:
        """Take a claimed job into the bookkeeping: its slot, its index entry, the counts."""
        timeout = job.timeout
        scope = trio.CancelScope(deadline=math.inf if timeout is None else now + timeout)
        attempt = Attempt(job, scope, now + self._lease, self._attempts.get(job.id))
        self._attempts[job.id] = attempt
        self._live += 1
        self._in_handlers += 1
        if self._caps and job.type in self._caps:
            self._capped_running[job.type] = self._capped_running.get(job.type, 0) + 1
        self.busy += 1
        if self._busy_waiters:
            self._busy_value.value = self.busy
        if self._force or not self.accepting:
            # Claimed after stop: the attempt task gives the job back.
            attempt.reason = "stop"
            scope.cancel()
        return attempt

    def _may_claim_next(self) -> bool:
        store = self._in_process
        if store is None or not self.accepting:
            return False
        types, free = self._claimable(self._free_slots())
        return free > 0 and bool(types) and store.has_ready(types)

    @trio.lowlevel.enable_ki_protection
    def _claim_next(self) -> Attempt | None:
        """In-process stores: the best ready job for a slot just freed, as an attempt.

        The task whose attempt just ended owns the next one, sparing a task spawn
        and a trip through the scheduler task per job.
        """
        store = self._in_process
        if store is None or not self._may_claim_next():
            return None
        jobs = store.claim_nowait(self._worker_id, 1, self._claimable(1)[0])
        return self._new_attempt(jobs[0], trio.current_time()) if jobs else None

    # -- one attempt -----------------------------------------------------------------

    async def _attempt_task(self, attempt: Attempt | None) -> None:
        """Own each attempt from claim to settle; release all it holds in ``finally``.

        On an in-process store the task then takes the next ready job, if a slot is
        free, and owns that attempt in turn; with none ready, or on a durable store,
        it parks until it is handed one (or the runner stops claiming). It holds
        nothing while parked. (A drain on a durable store then spawns no task per
        job: the tasks of one round of attempts take the round after next.)
        """
        _RUNNING_IN.set(self)
        while attempt is not None:
            try:
                await self._run_attempt(attempt)
            except BaseException as exc:
                # The handler raised KeyboardInterrupt/SystemExit, or something outside
                # it did (a callback, a Cancelled from outside the attempt): write what
                # the attempt leaves behind before letting the exception through.
                if not isinstance(exc, trio.Cancelled):
                    # The runner is going down with it: from now on nothing starts
                    # (a job given back here must not be claimed again meanwhile), and
                    # the other attempts are cancelled, as on a forced stop.
                    self.stop_claiming()
                    self.force_stop()
                if not attempt.settled:
                    self._release_slot(attempt)  # not held while the end is written
                    await self._outcomes.write_abandoned(attempt)
                raise
            finally:
                self._end(attempt)
            if self._may_claim_next():
                # Every loop checkpoints, whatever the handlers do; before claiming,
                # so that a cancellation here leaves no claimed job without an owner.
                await trio.lowlevel.checkpoint()
                attempt = self._claim_next()
            else:
                attempt = await self._park()

    async def _park(self) -> Attempt | None:
        """Wait to be handed an attempt; None: exit (stopping)."""
        if not self.accepting:
            return None
        task = trio.lowlevel.current_task()
        self._idle_tasks.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._idle_tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        # Handed over by reschedule(): from that moment the attempt is this task's,
        # and nothing can come between (a rescheduled task is not cancelled).
        handed: Attempt | None = await trio.lowlevel.wait_task_rescheduled(abort)
        return handed

    async def _run_attempt(self, attempt: Attempt) -> None:
        job = attempt.job
        outcomes = self._outcomes
        if attempt.previous is not None:
            # Our older attempt of this job (its lease lost) is still winding down:
            # two attempts of one job never run at once.
            await self._wait_for(attempt.previous)
            attempt.previous = None
        if attempt.reason == "stop" and not self.accepting:
            # Claimed as the runner stopped: give it back unstarted, even if the
            # runner is being cancelled meanwhile.
            self._release_slot(attempt)
            with outcomes.shield_for_writing(attempt):
                await outcomes.write(attempt, JobStatus.PENDING)
            return
        if self._events.active:
            self._events.emit("job:started", job)
        ctx: JobContext[Any] = JobContext(
            job,
            logger=self._logger,
            cancel_scope=attempt.scope,
            on_update=lambda ctx, progress: outcomes.context_updated(
                attempt, ctx, progress, self.nursery
            ),
        )
        handler = self._handlers[job.type]
        scope = attempt.scope
        returned = False  # the handler returned or raised an Exception (not cancelled)
        result: Any = None
        error: BaseException | None = None
        started = trio.current_time()
        with scope:
            try:
                with attempt_span(job):  # OpenTelemetry, when installed
                    if self._middleware:
                        result = await call_with_middleware(self._middleware, handler, job, ctx)
                    else:
                        result = await handler(job, ctx)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                if not isinstance(exc, trio.Cancelled):
                    attempt.fatal = exc  # the handler's own KeyboardInterrupt/SystemExit
                raise
            finally:
                attempt.handler_running = False
                self._release_slot(attempt)
            returned = True
            ended = trio.current_time()
            cause = attempt.cause(ended) if scope.cancel_called else None
            if cause is None:
                # The common path. Whatever happens to the runner now, the outcome is
                # written while the lease holds: the same scope, turned into a shield
                # (in-process, only where a progress flush can wait: the write itself
                # does not).
                if self._in_process is None or attempt.writer is not None or attempt.unsaved:
                    attempt.shield_for_writing(scope, self._margin)
                await outcomes.conclude(attempt, ctx, result, error, ended - started, None)
                return
        if attempt.write_scope is not None:
            # The lease ran out while the outcome was being written.
            outcomes.lease_ran_out(attempt)
            return
        ended = trio.current_time()
        cause = attempt.cause(ended)
        # (A cancelled scope cannot become a shield: the write gets a scope of its own.)
        with outcomes.shield_for_writing(attempt):
            await outcomes.conclude(
                attempt, ctx, result, error, ended - started, cause, interrupted=not returned
            )

    @trio.lowlevel.enable_ki_protection
    def _release_slot(self, attempt: Attempt) -> None:
        if attempt.holds_slot:
            attempt.holds_slot = False
            self._in_handlers -= 1
            job_type = attempt.job.type
            if self._caps and job_type in self._caps:
                self._capped_running[job_type] -= 1
                if self._cap_scope is not None:
                    self._cap_scope.cancel()
            if self._slot_freed:
                self._slot_freed.unpark_all()

    @trio.lowlevel.enable_ki_protection
    def _end(self, attempt: Attempt) -> None:
        """Give back all the attempt holds (the attempt task's ``finally``)."""
        self._release_slot(attempt)
        if self._attempts.get(attempt.job.id) is attempt:
            del self._attempts[attempt.job.id]
        self._live -= 1
        self.busy -= 1
        if self._busy_waiters:
            self._busy_value.value = self.busy
        attempt.ended = True
        if attempt.done is not None:
            attempt.done.set()
        if self._slot_freed:
            self._slot_freed.unpark_all()  # the write backlog shrank
        if self.settled:
            self.settled.unpark_all()
        if self._live == 0 and not self._services_wanted:
            self._services_scope.cancel()

    async def _wait_for(self, attempt: Attempt) -> None:
        if attempt.ended:
            await trio.lowlevel.checkpoint()
            return
        if attempt.done is None:
            attempt.done = trio.Event()
        await attempt.done.wait()

    def _cancel_attempt(self, attempt: Attempt, reason: str) -> None:
        if not attempt.handler_running:
            return  # its scope now shields the outcome write
        if attempt.reason is None:
            attempt.reason = reason
        attempt.scope.cancel()

    # -- leases, cancellation requests, rescue ---------------------------------------

    async def run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The services task: renew leases, relay cancel requests, rescue expired leases."""
        interval = min(self._lease / 3, self._poll_interval)
        with self._services_scope:
            async with trio.open_nursery() as nursery:
                if self._in_process is None:
                    # (An in-process store's leases cannot fail to renew.)
                    nursery.start_soon(self._run_fences, interval)
                task_status.started()
                while True:
                    await self._wait_for_cancel_requests(interval)
                    await self._renew_leases()
                    try:
                        rescued = await self._storage.rescue_expired()
                    except StorageCorruptError as exc:
                        self._fatal(exc)
                        continue
                    except Exception as exc:
                        self._report_error("rescuing expired leases failed", exc)
                        continue
                    if rescued:
                        self._log_rescued(rescued)
                        if self.settled:
                            self.settled.unpark_all()

    async def _run_fences(self, interval: float) -> None:
        """Cancel each attempt whose lease would run out unrenewed, before it does.

        The *fence*: an attempt is cancelled (reason "fence") once its lease has
        less than a fifth of ``lease_duration`` left without a renewal (the
        database is unreachable, a heartbeat stalls), so no other worker can rescue
        and rerun the job while it still runs here. A task of its own, so that a
        stalled heartbeat call cannot hold it up; it wakes at the earliest fence or
        every ``interval``, and costs nothing per job.
        """
        while True:
            now = trio.current_time()
            wake = now + interval
            for attempt in self._attempts.values():
                if not attempt.handler_running:
                    continue
                due = attempt.lease_until - self._margin
                if due <= now:
                    self._logger.warning(
                        "could not renew the lease on job %s; cancelling its attempt before "
                        "the lease runs out",
                        attempt.job.id,
                    )
                    self._cancel_attempt(attempt, "fence")
                else:
                    wake = min(wake, due)
            await trio.sleep_until(wake)

    async def _renew_leases(self) -> None:
        held = dict(self._attempts)  # the attempts this renewal speaks for
        sent = trio.current_time()
        try:
            if self._registered is not None and self._registered != self.types:
                # Handlers were registered since: the row says which types we claim.
                await self._reregister(len(held))
            beat = await self._storage.heartbeat(self._worker_id, list(held))
        except StorageCorruptError as exc:
            self._fatal(exc)
            return
        except Exception as exc:
            # The fences cancel attempts whose leases run out before a renewal works.
            self._report_error("renewing leases failed", exc)
            return
        if beat.lost and self._registered is not None:
            # Claims lost: another worker may have found our row stale and removed
            # it with our jobs. Write it again, so that workers() shows us.
            try:
                await self._reregister(len(held) - len(beat.lost))
            except Exception as exc:
                self._report_error("writing this worker's row failed", exc)
        for job_id in beat.cancel_requested:
            attempt = held.get(job_id)
            if attempt is not None and attempt.handler_running:
                self._cancel_attempt(attempt, "cancel")
        for job_id in beat.lost:
            attempt = held.get(job_id)
            if attempt is not None and attempt.handler_running:
                self._logger.warning("lost the claim on job %s; abandoning it", job_id)
                self._cancel_attempt(attempt, "lost")
        for job_id, attempt in held.items():
            if job_id not in beat.lost:
                attempt.renewed(sent + self._lease)

    async def _reregister(self, running: int) -> None:
        assert self._registry is not None
        types = self.types
        await self._registry.register_worker(self._worker_info(running))
        self._registered = types

    async def _wait_for_cancel_requests(self, timeout: float) -> None:
        wait = getattr(self._storage, "wait_for_cancel_request", None)
        if wait is None:
            await trio.sleep(timeout)
        else:
            await wait(timeout)

    def _fatal(self, error: StorageCorruptError) -> None:
        """The store cannot be used: claim nothing more, and end the runner with ``error``.

        Retrying would only repeat the error (a traceback a second, forever); the
        scheduler task raises it once it has stopped claiming, which ends the
        runner's block with it.
        """
        if self._fatal_error is None:
            self._fatal_error = error
            self._events.emit("runner:error", error=error)
        self.stop_claiming()

    def _store_failed(self, what: str, error: Exception, failures: int) -> float:
        """Note a store call that failed ``failures`` times in a row; return the pause.

        The pause doubles from ``poll_interval`` up to half a minute. One warning
        line (no traceback: the store, not the code, is at fault) on the first
        failure and every tenth, so a store that is down for an hour does not fill
        the log; every failure is still sent as ``runner:error``.
        """
        pause = min(self._poll_interval * 2.0 ** min(failures - 1, 30), _CLAIM_BACKOFF_CAP)
        pause = max(pause, self._poll_interval)
        if failures == 1 or failures % 10 == 0:
            self._logger.warning(
                "%s failed (%s: %s); trying again in %.1f s%s",
                what,
                type(error).__name__,
                " ".join(str(error).split()),
                pause,
                f" ({failures} failures in a row)" if failures > 1 else "",
            )
        self._events.emit("runner:error", error=error)
        return pause

    def _log_rescued(self, jobs: list[Job[Any]]) -> None:
        for job in jobs:
            error = job.last_error
            self._logger.warning(
                "rescued job %s %s: %s; now %s",
                job.id,
                job.type,
                error.message if error is not None else "its worker was lost",
                job.status.value,
            )

    def _report_error(self, what: str, error: Exception) -> None:
        self._logger.error("%s: %r", what, error, exc_info=error)
        self._events.emit("runner:error", error=error)
