"""The runner: a nursery that claims jobs from a store and runs each attempt in its own scope."""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, final

import trio

from ._events import Callback, EventHub
from ._exceptions import (
    JobNotFoundError,
    RunnerClosedError,
    RunnerStoppedError,
    UnknownJobTypeError,
)
from ._flow import check_count
from ._handle import JobHandle
from ._middleware import Middleware, check_middleware
from ._outcome import unwrap
from ._periodic import Periodic, check_retention, make_spec, schedules_from_rows
from ._records import Job, JobPriority, JobStatus, RunnerEvent, Schedule
from ._retry import RetryConfig
from ._scheduler import Handler, Scheduler
from ._store_admin import StoreAdmin
from ._store_flow import StoreFlowControl
from ._submit import build_job, check_seconds, resolve_delay, save_batch, store_jobs
from ._threads import as_handler
from .storage._base import (
    CancelOutcome,
    InProcessStorage,
    JobStorage,
    ScheduleStorage,
)
from .storage._memory import MemoryStorage

H = TypeVar("H", bound=Callable[..., Any])


@final
class JobRunner(StoreAdmin, StoreFlowControl):
    """Runs jobs: ``async with JobRunner() as runner:`` opens its nursery.

    Handlers are registered by job type; :meth:`submit` stores a job and returns a
    :class:`JobHandle`. Inside the block, a scheduler claims the best ready jobs
    (highest priority first, FIFO within a priority) whenever a concurrency slot is
    free, and runs each attempt in its own :class:`trio.CancelScope` whose deadline is
    the job's timeout. Failed attempts are retried after a backoff that holds no slot.

    Leaving the block normally waits for every pending, delayed, retrying and
    running job of the runner's types to reach a final status, like a nursery waiting
    for its children; call :meth:`stop` first to leave without draining. An exception
    from the block cancels running jobs (they go back to PENDING) and propagates
    unchanged.

    Args:
        concurrency: At most this many handlers run at once.
        default_timeout: Seconds an attempt may run when ``submit`` gives no
            ``timeout``; ``None`` or ``math.inf`` for no limit.
        poll_interval: Seconds between polls of a durable store (the in-memory store
            wakes the scheduler at once and needs no polling).
        default_retry: The retry policy of jobs submitted without one.
        storage: Where jobs live; a fresh :class:`MemoryStorage` by default. The
            runner opens it on entry and closes it on exit.
        logger: Where the runner logs; ``logging.getLogger("trio_jobs")`` by default.
        middleware: Callables ``(job, ctx) -> async context manager``, entered
            around every attempt in this order (and left in reverse), inside the
            attempt's cancel scope: a database session per job, error reporting,
            :func:`log_context`. An exception one raises is the attempt's error.
        retention: Final statuses mapped to ages in seconds: jobs of such a status
            completed longer ago are deleted in the background, in batches of
            1,000, by one runner on the store at a time. ``None`` keeps everything.

    Raises:
        ValueError: ``concurrency < 1``, a negative time, or a negative or
            non-final ``retention`` entry.
        TypeError: an argument has the wrong type.
    """

    def __init__(
        self,
        *,
        concurrency: int = 10,
        default_timeout: float | None = 300.0,
        poll_interval: float = 1.0,
        default_retry: RetryConfig | None = None,
        storage: JobStorage | None = None,
        logger: logging.Logger | None = None,
        middleware: Sequence[Middleware] = (),
        retention: Mapping[JobStatus, float] | None = None,
    ) -> None:
        retention = check_retention(retention)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
        check_seconds("default_timeout", default_timeout, allow_none=True)
        check_seconds("poll_interval", poll_interval, allow_inf=False)
        if poll_interval == 0:
            raise ValueError("poll_interval must be > 0")
        if default_retry is not None and not isinstance(default_retry, RetryConfig):
            raise TypeError(f"default_retry must be a RetryConfig, got {default_retry!r}")
        self._concurrency = concurrency
        self._default_timeout = default_timeout
        self._poll_interval = float(poll_interval)
        self._default_retry = default_retry or RetryConfig()
        self._storage: JobStorage = storage if storage is not None else MemoryStorage()
        # An in-process store sees every change and never blocks: submit claims the
        # job itself when a slot is free (see Scheduler.submit_in_process).
        self._in_process: InProcessStorage | None = (
            self._storage if isinstance(self._storage, InProcessStorage) else None
        )
        self._logger = logger or logging.getLogger("trio_jobs")
        self._events = EventHub(self._logger)
        self._handlers: dict[str, Handler] = {}
        # Plain-def handlers' threads: at most one per slot, apart from the threads
        # of the stores' drivers (Trio's default limiter).
        self._threads = trio.CapacityLimiter(concurrency)
        self._caps: dict[str, int] = {}
        hostname, pid = socket.gethostname(), os.getpid()
        self._worker_id = f"{hostname}:{pid}:{uuid.uuid4().hex[:8]}"
        self._scheduler = Scheduler(
            storage=self._storage,
            handlers=self._handlers,
            concurrency=concurrency,
            caps=self._caps,
            poll_interval=self._poll_interval,
            default_retry=self._default_retry,
            events=self._events,
            logger=self._logger,
            worker_id=self._worker_id,
            hostname=hostname,
            pid=pid,
            middleware=check_middleware(middleware),
        )

        self._state = "new"  # new -> running -> stopping -> stopped
        self._nursery_manager: Any = None
        self._waiter_scopes: set[trio.CancelScope] = set()
        # Schedules and retention: tasks in a nursery of their own, stopped before
        # the runner drains (a tick must not keep a draining runner busy).
        self._periodic = Periodic(
            storage=self._storage,
            scheduler=self._scheduler,
            events=self._events,
            logger=self._logger,
            worker_id=self._worker_id,
            retention=retention,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
        )

    # -- properties ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering the block and the start of :meth:`stop`."""
        return self._state == "running"

    @property
    def worker_id(self) -> str:
        """This runner's identity in the store, as ``host:pid:random``."""
        return self._worker_id

    @property
    def job_types(self) -> frozenset[str]:
        """The job types this runner has handlers for (the ones it claims)."""
        return self._scheduler.types

    @property
    def storage(self) -> JobStorage:
        """The store this runner works on."""
        return self._storage

    # -- handlers --------------------------------------------------------------------

    def register_handler(
        self, job_type: str, handler: H, /, *, concurrency: int | None = None
    ) -> H:
        """Register ``async def handler(job, ctx) -> result`` for ``job_type``; return it.

        A plain ``def handler(job, ctx)`` runs in a worker thread instead (see
        :ref:`sync-handlers`): it holds its concurrency slot until it returns, and
        cannot be interrupted, so it should check ``ctx.cancelled``. A callable
        object with an ``async def __call__`` and a :func:`functools.partial` of an
        ``async def`` function are async handlers.

        Handlers may be registered before or after entering the block; a durable
        store's worker claims only jobs whose type has a handler.

        Args:
            job_type: The type of jobs this handler runs.
            handler: ``async def handler(job, ctx)``.
            concurrency: At most this many attempts of ``job_type`` run at once *in
                this runner* (within its overall ``concurrency``); None: no cap of
                its own. For a cap across all runners, see :meth:`set_limits`.

        Raises:
            ValueError: ``job_type`` already has a handler, or ``concurrency < 1``.
            TypeError: ``handler`` is neither an async nor a plain callable (a
                generator function, a non-callable), ``job_type`` not a string, or
                ``concurrency`` not an int.
        """
        if not isinstance(job_type, str) or not job_type:
            raise TypeError(f"job_type must be a non-empty str, got {job_type!r}")
        wrapped = as_handler(handler, self._threads)
        cap = check_count("concurrency", concurrency)
        if job_type in self._handlers:
            raise ValueError(f"job type {job_type!r} already has a handler")
        if cap is not None:
            self._caps[job_type] = cap
        self._handlers[job_type] = wrapped
        self._scheduler.set_types(frozenset(self._handlers))
        if self._in_process is not None:
            self._in_process.wake()  # jobs of this type may be waiting already
        return handler

    def handler(self, job_type: str, /) -> Callable[[H], H]:
        """Decorator form of :meth:`register_handler`: ``@runner.handler("email")``."""

        def decorate(fn: H) -> H:
            return self.register_handler(job_type, fn)

        return decorate

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a JobRunner can be entered only once")
        self._state = "starting"
        await self._storage.open()
        try:
            await self._scheduler.register()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._storage.close()
            raise
        self._nursery_manager = trio.open_nursery()
        try:
            nursery = await self._nursery_manager.__aenter__()
            self._scheduler.nursery = nursery
            await nursery.start(self._scheduler.run_services)
            await nursery.start(self._scheduler.run)
            await nursery.start(self._periodic.run)
        except BaseException as exc:
            self._scheduler.stop_claiming()
            self._scheduler.stop_services()
            try:
                await self._exit_nursery(exc)
            finally:
                with trio.CancelScope(shield=True):
                    await self._scheduler.unregister()
                    await self._storage.close()
            raise
        self._state = "running"
        self._events.emit("runner:started")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._periodic.cancel()
        if exc is not None:
            # The body raised: cancel running jobs (they go back to PENDING) and let
            # the exception continue unchanged.
            return await self._finish(exc)
        try:
            if self._state == "running":
                await self._drain()
            await self.stop()
        except BaseException as error:
            if not await self._finish(error):
                raise
            return False
        await self._finish(None)
        return False

    async def _finish(self, exc: BaseException | None) -> bool:
        """Force-stop, close the nursery and the store; True if ``exc`` was absorbed."""
        if self._state != "stopped":
            self._begin_stop(graceful=False)
            with trio.CancelScope(shield=True):
                await self._scheduler.wait_until_stopped_claiming()
                await self._scheduler.wait_until_idle()
                self._end_stop()
        try:
            return await self._exit_nursery(exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._scheduler.unregister()
                await self._storage.close()

    async def _exit_nursery(self, exc: BaseException | None) -> bool:
        manager, self._nursery_manager = self._nursery_manager, None
        if manager is None:
            return False
        # Only a Cancelled may belong to the nursery's own scope; anything else from
        # the body is the user's and must not be wrapped in an ExceptionGroup.
        passed = exc if isinstance(exc, trio.Cancelled) else None
        try:
            absorbed = await manager.__aexit__(type(passed) if passed else None, passed, None)
            # The manager says "absorbed" whenever nothing is left to raise; that
            # speaks for ``exc`` only when ``exc`` was handed to it.
            return bool(absorbed) and passed is not None
        except BaseExceptionGroup as group:
            # Handlers' errors never reach the nursery; what does is a
            # KeyboardInterrupt/SystemExit from a handler, or a runner bug. Raise a
            # lone one bare, as the user would have seen it without us.
            single = unwrap(group)
            if single is not group:
                raise single from None
            raise

    async def stop(self, graceful: bool = True) -> None:
        """Stop the runner: start nothing new, then wait for running attempts.

        ``graceful=True`` lets running attempts finish. ``graceful=False`` cancels
        them at once; each interrupted job goes back to PENDING and the interrupted
        attempt is not counted. Either way jobs that have not started stay in the
        store (a durable store runs them after the next start), and tasks waiting on
        jobs that are not final get :class:`RunnerStoppedError`. Calling ``stop``
        again is harmless; ``stop(False)`` during a graceful stop forces it.

        Once ``stop`` returns, the runner starts no handler: a claim that was in
        flight gives its jobs back (PENDING, attempt not counted). Called from
        inside a handler, it does not wait for the calling attempt.
        """
        await trio.lowlevel.checkpoint()
        if self._state in ("new", "stopped"):
            return
        self._begin_stop(graceful)
        await self._scheduler.wait_until_stopped_claiming()
        await self._scheduler.wait_until_idle()
        self._end_stop()

    def _begin_stop(self, graceful: bool) -> None:
        self._periodic.cancel()
        if self._state in ("running", "starting"):
            self._state = "stopping"
            self._scheduler.stop_claiming()
            self._scheduler.settled.unpark_all()  # join() and the drain notice at once
        if not graceful:
            self._scheduler.force_stop()

    def _end_stop(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._scheduler.stop_services()  # also wakes join(), which notices at once
        for scope in self._waiter_scopes:
            scope.cancel()
        self._events.emit("runner:stopped")
        self._events.close()

    # -- submitting and reading ------------------------------------------------------

    async def submit(
        self,
        job_type: str,
        payload: Any = None,
        /,
        *,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
    ) -> JobHandle[Any]:
        """Store a new job and return its handle.

        Args:
            job_type: The type; a handler must be registered for it.
            payload: The job's data (JSON-encodable for a durable store).
            priority: Higher priorities start first.
            retry: A full :class:`RetryConfig`, or a mapping of fields overriding the
                runner's ``default_retry``.
            timeout: Seconds each attempt may run; ``None`` takes the runner's
                ``default_timeout``, ``math.inf`` means no limit.
            delay: Seconds before the job becomes eligible (timed on the Trio clock
                with the in-memory store). It holds no concurrency slot meanwhile.
            metadata: Free-form data stored with the job.
            tenant_id: The tenant the job belongs to.
            run_at: A timezone-aware wall-clock time before which the job does not
                start (instead of ``delay``; a past time means at once).
            unique_key: While a job with this key is pending, delayed, running or
                retrying, store nothing and return that job's handle, with
                ``JobHandle.deduplicated`` True. Race-free across processes.

        Raises:
            RunnerClosedError: the runner is not running.
            UnknownJobTypeError: no handler for ``job_type``.
            ValueError, TypeError: an argument is invalid (nothing is stored);
                ``run_at`` naive or given with ``delay``.
        """
        if self._state != "running":
            raise RunnerClosedError("the runner is not running (enter its `async with` block)")
        if job_type not in self._handlers:
            raise UnknownJobTypeError(f"no handler registered for job type {job_type!r}")
        delay = resolve_delay(delay, run_at)
        job = build_job(
            job_type,
            payload,
            priority=priority,
            retry=retry,
            timeout=timeout,
            delay=delay,
            metadata=metadata,
            tenant_id=tenant_id,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
            unique_key=unique_key,
        )
        if unique_key is not None:
            (holder,) = await store_jobs(self._storage, [job], delay)
            if holder != job.id:
                return JobHandle(holder, job_type, self, deduplicated=True)
            self._scheduler.remember_policy(job)
        elif self._in_process is None:
            await self._storage.save(job, delay=delay)
            self._scheduler.remember_policy(job)
        else:
            await trio.lowlevel.checkpoint()
            # Started here if a slot is free (its task runs after this returns).
            self._scheduler.submit_in_process(self._in_process, job, delay)
        if self._events.active:
            self._events.emit("job:submitted", job)
        return JobHandle(job.id, job_type, self)

    async def submit_many(
        self,
        job_type: str,
        payloads: Iterable[Any],
        /,
        *,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
    ) -> list[JobHandle[Any]]:
        """Store one job per payload, all in one transaction or none; return their handles.

        The options are :meth:`submit`'s, applied to each job. Every argument and
        payload is validated first (a payload a durable store cannot encode raises
        :exc:`TypeError`, nothing stored). With ``unique_key``, the first job takes
        the key (unless an active job holds it) and the others are deduplicated to it.

        Raises:
            RunnerClosedError: the runner is not running.
            UnknownJobTypeError: no handler for ``job_type``.
            ValueError, TypeError: an argument or payload is invalid (nothing is stored).
        """
        if self._state != "running":
            raise RunnerClosedError("the runner is not running (enter its `async with` block)")
        if job_type not in self._handlers:
            raise UnknownJobTypeError(f"no handler registered for job type {job_type!r}")
        saved = await save_batch(
            self._storage,
            job_type,
            payloads,
            priority=priority,
            retry=retry,
            timeout=timeout,
            delay=delay,
            metadata=metadata,
            tenant_id=tenant_id,
            run_at=run_at,
            unique_key=unique_key,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
        )
        handles: list[JobHandle[Any]] = []
        for job, holder in saved:
            if holder == job.id:
                self._scheduler.remember_policy(job)
                if self._events.active:
                    self._events.emit("job:submitted", job)
            handles.append(JobHandle(holder, job_type, self, deduplicated=holder != job.id))
        return handles

    # -- schedules and retention -------------------------------------------------------

    def add_schedule(
        self,
        job_type: str,
        payload: Any = None,
        /,
        *,
        cron: str | None = None,
        every: float | None = None,
        key: str | None = None,
        timezone: str = "UTC",
        backfill: float = 0.0,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        """Enqueue a ``job_type`` job at every tick of ``cron`` or ``every``.

        Each tick enqueues exactly one job per ``key`` across every runner on the
        store: the store records the tick under a unique constraint in the
        transaction that inserts the job, so runners that lose the race enqueue
        nothing. The job's metadata carries ``"schedule": key`` and
        ``"scheduled_for"`` (the tick, ISO 8601 UTC). Any runner with a handler
        for ``job_type`` may run it. Ticks are timed on the Trio clock, anchored to
        the wall clock when the runner starts. Callable before or inside the block.

        Args:
            job_type: The type of the jobs to enqueue.
            payload: Their payload.
            cron: A 5-field cron expression (parsed by cronsim, the ``cron`` extra),
                read in ``timezone``.
            every: A period in seconds; ticks fall on multiples of it since the
                Unix epoch, so all runners agree on them.
            key: The schedule's identity across runners; ``job_type`` by default.
            timezone: The IANA timezone of ``cron`` (daylight saving followed).
            backfill: At start, ticks missed at most this many seconds ago are
                enqueued, oldest first; older ones are skipped.
            priority: As for :meth:`submit`.
            retry: As for :meth:`submit`.
            timeout: As for :meth:`submit`.
            metadata: As for :meth:`submit`; ``schedule`` and ``scheduled_for`` are added.
            tenant_id: As for :meth:`submit`.

        Raises:
            ValueError: not exactly one of ``cron`` and ``every``, an invalid
                expression, period, timezone or ``backfill``, or a ``key`` in use.
            TypeError: the store keeps no schedules, or an argument's type is wrong.
        """
        if not isinstance(self._storage, ScheduleStorage):
            raise TypeError(f"{type(self._storage).__name__} cannot keep schedules")
        options = {
            "priority": priority,
            "retry": retry,
            "timeout": timeout,
            "metadata": metadata,
            "tenant_id": tenant_id,
        }
        spec = make_spec(
            job_type,
            payload,
            cron=cron,
            every=every,
            key=key,
            timezone=timezone,
            backfill=backfill,
            options=options,
        )
        # Check the job options now, not at the first tick.
        build_job(
            job_type,
            payload,
            delay=0.0,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
            **options,  # type: ignore[arg-type]
        )
        self._periodic.add(spec)

    async def schedules(self) -> list[Schedule]:
        """Return the schedules on the store (every runner's), and this runner's, by key."""
        async with self._store() as store:
            rows = await store.list_schedules() if isinstance(store, ScheduleStorage) else []
        return schedules_from_rows(rows, self._periodic.specs, self._periodic.now())

    @asynccontextmanager
    async def _store(self) -> AsyncIterator[JobStorage]:
        """Yield the store, opened for the duration if the runner is not in its block.

        Reads keep working before entering and after stopping: a store the runner
        closed is reopened just for them.
        """
        if self._state in ("new", "stopped"):
            await self._storage.open()
            try:
                yield self._storage
            finally:
                with trio.CancelScope(shield=True):
                    await self._storage.close()
        else:
            yield self._storage

    # Reading jobs, workers and counts, retrying and purging are StoreAdmin's (in
    # _store_admin); limits, pauses and tenant weights are StoreFlowControl's (in
    # _store_flow), shared with JobClient. Both read the store through _store, above.

    async def get_handle(self, job_id: str) -> JobHandle[Any]:
        """Return a handle on an existing job (reattach by id).

        Raises:
            JobNotFoundError: the store knows no such job.
        """
        job = await self.get_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return JobHandle(job.id, job.type, self)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job.

        A pending or retrying job ends CANCELLED at once. A running job has its
        attempt's scope cancelled and ends CANCELLED (in another process, its worker
        notices within its poll interval, or at once on PostgreSQL). A job whose
        handler has already returned here keeps its outcome.

        Returns:
            True when the cancellation took effect (or, for a job running in
            another process, was sent to it); False for an unknown or already
            final job, or one whose handler here has already returned.
        """
        async with self._store() as store:
            outcome = await store.request_cancel(job_id)
        if outcome is CancelOutcome.NOTHING:
            return False
        if outcome is CancelOutcome.CANCELLED:
            self._scheduler.settled.unpark_all()
            if self._events.active:
                job = await self.get_job(job_id)
                if job is not None:
                    self._events.emit("job:cancelled", job)
            return True
        return self._scheduler.cancel_job(job_id) is not False

    async def join(self) -> None:
        """Wait until no job of this runner's types is pending, retrying or running.

        Raises:
            RunnerStoppedError: the runner stopped while jobs were unfinished.
            RuntimeError: called from inside a handler of this runner (it would wait
                for its own job).
        """
        if self._scheduler.called_from_an_attempt():
            raise RuntimeError(
                "join() called from inside a handler of this runner would wait for its "
                "own job forever; use stop() to end the runner from a handler"
            )
        if not await self._drain():
            raise RunnerStoppedError("the runner stopped before its jobs were done")

    async def _drain(self) -> bool:
        """Wait until this runner's types have no unfinished job; False if it stopped first."""
        scheduler = self._scheduler
        while True:
            # Ask the store only when nothing here runs and the scheduler found it dry:
            # otherwise the answer is "not yet" and the query would slow the work down.
            idle = scheduler.busy == 0
            idle = idle and (self._in_process is not None or scheduler.store_dry)
            if idle and not await self._storage.count_unfinished(scheduler.types):
                return True
            if self._state == "stopped" or (self._state == "stopping" and not scheduler.busy):
                # Stopped, or stopping with nothing left running here (a stop from
                # inside a handler is completed by the block's exit): no job of
                # ours will reach a final status in this runner any more.
                return False
            with trio.move_on_after(self._poll_interval):
                await scheduler.settled.park()

    # -- events ----------------------------------------------------------------------

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` synchronously on every ``event``; return an unsubscribe function.

        Events and their positional arguments: ``job:submitted(job)``,
        ``job:started(job)``, ``job:progress(job)``, ``job:completed(job, result)``,
        ``job:failed(job, error)``, ``job:retrying(job, attempt, delay)``,
        ``job:cancelled(job)``, ``job:timeout(job)``, ``runner:started()``,
        ``runner:stopped()``, ``runner:error(error)``. A callback that raises is
        logged and ignored.

        Raises:
            ValueError: unknown event name.
        """
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event``."""
        self._events.off(event, callback)

    def subscribe(
        self, *, max_buffer_size: float = math.inf
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[RunnerEvent]]:
        """Return an async context manager yielding a channel of :class:`RunnerEvent`.

        Events are buffered from the moment of subscribing. When a bounded buffer is
        full the event is dropped for this subscriber; the runner never waits for a
        reader. The channel ends when the runner stops::

            async with runner.subscribe() as events:
                async for event in events:
                    print(event.name, event.job and event.job.id)
        """
        return self._events.subscribe(max_buffer_size)

    # -- for handles -----------------------------------------------------------------

    async def _wait_final(self, job_id: str) -> Job[Any]:
        while True:
            job = await self.get_job(job_id)
            if job is None:
                raise JobNotFoundError(job_id)
            if job.status.is_final:
                return job
            if self._state in ("new", "stopped"):
                raise RunnerStoppedError(f"the runner stopped before job {job_id} was final")
            with trio.CancelScope() as scope:
                self._waiter_scopes.add(scope)
                try:
                    await self._storage.wait_for_change(job_id, self._poll_interval)
                finally:
                    self._waiter_scopes.discard(scope)

    def _local_error(self, job_id: str) -> BaseException | None:
        return self._scheduler.local_error(job_id)


__all__ = ["JobRunner", "RunnerEvent"]
