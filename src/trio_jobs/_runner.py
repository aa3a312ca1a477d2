"""The runner: a nursery that claims jobs from a store and runs each attempt in its own scope."""

from __future__ import annotations

import logging
import math
import os
import socket
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, final

import attrs
import trio

from ._context import JobContext
from ._events import Callback, EventHub
from ._exceptions import (
    JobNotFoundError,
    JobTimeoutError,
    RunnerClosedError,
    RunnerStoppedError,
    UnknownJobTypeError,
)
from ._handle import JobHandle
from ._records import ErrorInfo, Job, JobPriority, JobStats, JobStatus, RunnerEvent, replace, utcnow
from ._retry import RetryConfig, compute_delay, is_retryable_error
from ._submit import build_job, check_seconds
from .storage._base import CancelOutcome, InProcessStorage, JobStorage
from .storage._memory import MemoryStorage

R = TypeVar("R")
Handler = Callable[[Job[Any], JobContext[Any]], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

#: How many original exceptions of failed jobs are kept for ``JobFailedError.__cause__``.
_LOCAL_ERRORS_KEPT = 10_000


def error_info(error: BaseException, attempt: int, *, retryable: bool) -> ErrorInfo:
    """Record ``error`` as an :class:`ErrorInfo`."""
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return ErrorInfo(
        message=str(error),
        type=name,
        traceback="".join(traceback.format_exception(error)),
        attempt=attempt,
        timestamp=utcnow(),
        retryable=retryable,
    )


@attrs.define(eq=False)
class _Attempt:
    """One running attempt, as the runner tracks it."""

    job: Job[Any]
    scope: trio.CancelScope
    #: Why the runner cancelled the scope: "cancel" (user), "stop" (forced stop), "lost".
    reason: str | None = None
    #: Set once the handler is done and the outcome is being written.
    settling: bool = False
    #: The newest context snapshot whose progress/metadata is not stored yet.
    unsaved: JobContext[Any] | None = None
    writing: bool = False


@final
class JobRunner:
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

    Raises:
        ValueError: ``concurrency < 1`` or a negative time.
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
    ) -> None:
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
        # An in-process store sees every change and never blocks: the runner waits on
        # it without polling and skips a trip through Trio's scheduler per job.
        self._in_process: InProcessStorage | None = (
            self._storage if isinstance(self._storage, InProcessStorage) else None
        )
        self._logger = logger or logging.getLogger("trio_jobs")
        self._events = EventHub(self._logger)
        self._handlers: dict[str, Handler] = {}
        self._types: frozenset[str] = frozenset()
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

        self._state = "new"  # new -> running -> stopping -> stopped
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._scheduler_scope = trio.CancelScope()
        self._services_scope = trio.CancelScope()
        self._running: dict[str, _Attempt] = {}
        #: Outcomes being written to the store (their slots are already free).
        self._writes = 0
        #: Whether the last claim found fewer ready jobs than it asked for.
        self._store_dry = False
        self._slot_freed = trio.lowlevel.ParkingLot()
        self._settled = trio.lowlevel.ParkingLot()
        self._stopped = trio.Event()
        self._force = False
        self._waiter_scopes: set[trio.CancelScope] = set()
        self._local_errors: dict[str, BaseException] = {}
        self._retry_policies: dict[str, RetryConfig] = {}

    # -- properties ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering the block and the start of :meth:`stop`."""
        return self._state == "running"

    @property
    def worker_id(self) -> str:
        """This runner's identity in the store: ``host:pid:random``."""
        return self._worker_id

    @property
    def storage(self) -> JobStorage:
        """The store this runner works on."""
        return self._storage

    # -- handlers --------------------------------------------------------------------

    def register_handler(self, job_type: str, handler: H, /) -> H:
        """Register ``async def handler(job, ctx) -> result`` for ``job_type``; return it.

        Handlers may be registered before or after entering the block; a durable
        store's worker claims only jobs whose type has a handler.

        Raises:
            ValueError: ``job_type`` already has a handler.
            TypeError: ``handler`` is not callable or ``job_type`` not a string.
        """
        if not isinstance(job_type, str) or not job_type:
            raise TypeError(f"job_type must be a non-empty str, got {job_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be an async callable, got {handler!r}")
        if job_type in self._handlers:
            raise ValueError(f"job type {job_type!r} already has a handler")
        self._handlers[job_type] = handler
        self._types = frozenset(self._handlers)
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
        self._nursery_manager = trio.open_nursery()
        try:
            self._nursery = await self._nursery_manager.__aenter__()
            await self._nursery.start(self._run_services)
            await self._nursery.start(self._schedule)
        except BaseException as exc:
            self._scheduler_scope.cancel()
            self._services_scope.cancel()
            try:
                await self._exit_nursery(exc)
            finally:
                with trio.CancelScope(shield=True):
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
                await self._wait_until_idle()
                self._end_stop()
        try:
            return await self._exit_nursery(exc)
        finally:
            with trio.CancelScope(shield=True):
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
            single = _single_exception(group)
            if single is not None:
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
        """
        await trio.lowlevel.checkpoint()
        if self._state in ("new", "stopped"):
            return
        self._begin_stop(graceful)
        await self._wait_until_idle()
        self._end_stop()

    def _begin_stop(self, graceful: bool) -> None:
        if self._state in ("running", "starting"):
            self._state = "stopping"
            self._scheduler_scope.cancel()
        if not graceful and not self._force:
            self._force = True
            for attempt in self._running.values():
                if attempt.reason is None:
                    attempt.reason = "stop"
                attempt.scope.cancel()

    async def _wait_until_idle(self) -> None:
        while self._running or self._writes:
            await self._slot_freed.park()

    def _end_stop(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._services_scope.cancel()
        self._stopped.set()
        self._settled.unpark_all()  # join() notices at once
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

        Raises:
            RunnerClosedError: the runner is not running.
            UnknownJobTypeError: no handler for ``job_type``.
            ValueError, TypeError: an argument is invalid (nothing is stored).
        """
        if self._state != "running":
            raise RunnerClosedError("the runner is not running (enter its `async with` block)")
        if job_type not in self._handlers:
            raise UnknownJobTypeError(f"no handler registered for job type {job_type!r}")
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
        )
        if self._in_process is None:
            await self._storage.save(job, delay=delay)
        else:
            await trio.lowlevel.checkpoint()
            # Claim it here if a slot is free, as the scheduler would: that spares
            # waking the scheduler task for every job.
            self._in_process.save_nowait(job, delay=delay, wake=False)
        if job.retry is not None and job.retry.is_retryable is not None:
            self._retry_policies[job.id] = job.retry
        if self._events.active:
            self._events.emit("job:submitted", job)
        if self._in_process is not None and not delay:
            self._dispatch(self._in_process)
        return JobHandle(job.id, job_type, self)

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

    async def get_job(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        async with self._store() as store:
            return await store.get(job_id)

    async def get_handle(self, job_id: str) -> JobHandle[Any]:
        """Return a handle on an existing job (reattach by id).

        Raises:
            JobNotFoundError: the store knows no such job.
        """
        job = await self.get_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return JobHandle(job.id, job.type, self)

    async def stats(self) -> JobStats:
        """Return counts of jobs by status, from the store."""
        async with self._store() as store:
            return await store.get_stats()

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job.

        A pending or retrying job ends CANCELLED at once. A running job has its
        attempt's scope cancelled and ends CANCELLED (in another process, its worker
        notices within its poll interval, or at once on PostgreSQL).

        Returns:
            True when the cancellation took effect; False for an unknown or
            already final job.
        """
        async with self._store() as store:
            outcome = await store.request_cancel(job_id)
        if outcome is CancelOutcome.NOTHING:
            return False
        if outcome is CancelOutcome.CANCELLED:
            self._settled.unpark_all()
            if self._events.active:
                job = await self.get_job(job_id)
                if job is not None:
                    self._events.emit("job:cancelled", job)
            return True
        attempt = self._running.get(job_id)
        if attempt is not None:
            self._cancel_attempt(attempt, "cancel")
        return True

    async def join(self) -> None:
        """Wait until no job of this runner's types is pending, retrying or running.

        Raises:
            RunnerStoppedError: the runner stopped while jobs were unfinished.
        """
        if not await self._drain():
            raise RunnerStoppedError("the runner stopped before its jobs were done")

    async def _drain(self) -> bool:
        """Wait until this runner's types have no unfinished job; False if it stopped first."""
        while True:
            # Ask the store only when nothing here runs and the scheduler found it dry:
            # otherwise the answer is "not yet" and the query would slow the work down.
            idle = not self._running and not self._writes
            idle = idle and (self._in_process is not None or self._store_dry)
            if idle and not await self._storage.count_unfinished(self._types):
                return True
            if self._state == "stopped":
                return False
            with trio.move_on_after(self._poll_interval):
                await self._settled.park()

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
        return self._local_errors.get(job_id)

    # -- the scheduler ---------------------------------------------------------------

    async def _schedule(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        storage = self._storage
        running = self._running
        claim_nowait = self._in_process.claim_nowait if self._in_process is not None else None
        idle_wait = math.inf if claim_nowait is not None else self._poll_interval
        with self._scheduler_scope:
            task_status.started()
            while True:
                free = self._concurrency - len(running)
                if free <= 0:
                    await self._slot_freed.park()
                    continue
                try:
                    if claim_nowait is not None:
                        # Never blocks; the loop checkpoints when it parks or waits,
                        # which it does at the latest on the next turn.
                        jobs = claim_nowait(self._worker_id, free, self._types)
                    else:
                        jobs = await storage.claim(self._worker_id, free, self._types)
                except Exception as exc:
                    self._report_error("claiming jobs failed", exc)
                    await trio.sleep(self._poll_interval)
                    continue
                self._store_dry = len(jobs) < free
                if jobs:
                    for job in jobs:
                        self._start(job)
                else:
                    await storage.wait_for_work(idle_wait)

    def _dispatch(self, store: InProcessStorage) -> None:
        """Start the best ready jobs in the free slots, or leave the scheduler a wake-up."""
        free = self._concurrency - len(self._running)
        if free > 0 and self._state == "running":
            for job in store.claim_nowait(self._worker_id, free, self._types):
                self._start(job)
        else:
            store.wake()

    def _start(self, job: Job[Any]) -> None:
        assert self._nursery is not None
        timeout = job.timeout
        scope = trio.CancelScope(
            deadline=math.inf if timeout is None else trio.current_time() + timeout
        )
        attempt = _Attempt(job, scope)
        self._running[job.id] = attempt
        if self._force:
            attempt.reason = "stop"
            scope.cancel()
        self._nursery.start_soon(self._run_attempt, attempt)

    async def _run_attempt(self, attempt: _Attempt) -> None:
        job = attempt.job
        scope = attempt.scope
        handler = self._handlers[job.type]
        if self._events.active:
            self._events.emit("job:started", job)
        ctx: JobContext[Any] = JobContext(
            job, logger=self._logger, cancel_scope=scope, on_update=self._context_updated
        )
        error: BaseException | None = None
        result: Any = None
        started = trio.current_time()
        try:
            with scope:
                result = await handler(job, ctx)
        except Exception as exc:
            error = exc
        except BaseException:
            # KeyboardInterrupt, SystemExit, or a Cancelled from outside the attempt:
            # give the job back before letting it through.
            with trio.CancelScope(shield=True):
                await self._settle(attempt, JobStatus.PENDING)
            raise
        elapsed = trio.current_time() - started
        if attempt.unsaved is not None:
            await self._flush_progress(attempt)
        await self._conclude(attempt, ctx, result, error, elapsed)

    async def _conclude(
        self,
        attempt: _Attempt,
        ctx: JobContext[Any],
        result: Any,
        error: BaseException | None,
        elapsed: float,
    ) -> None:
        job = attempt.job
        reason = attempt.reason
        interrupted = error is not None or attempt.scope.cancelled_caught
        if reason == "stop" and interrupted:
            # An orderly shutdown is not the job's fault: back to PENDING, uncounted.
            await self._settle(attempt, JobStatus.PENDING)
            return
        if reason == "lost":
            # Our lease was taken away and the job rescued: its state is no longer
            # ours to write.
            self._release(attempt)
            return
        if reason == "cancel":
            if await self._settle(attempt, JobStatus.CANCELLED, execution_time=elapsed):
                self._emit_final("job:cancelled", job, ctx, status=JobStatus.CANCELLED)
            return
        timed_out = interrupted and attempt.scope.cancel_called
        if timed_out:
            error = JobTimeoutError(
                f"job {job.id} attempt {job.attempts} timed out after {job.timeout} s"
            )
            if self._events.active:
                self._events.emit("job:timeout", self._snapshot(job, ctx))
        if error is None:
            if (
                await self._settle(
                    attempt, JobStatus.COMPLETED, result=result, execution_time=elapsed
                )
                and self._events.active
            ):
                done = self._snapshot(
                    job,
                    ctx,
                    status=JobStatus.COMPLETED,
                    result=result,
                    completed_at=utcnow(),
                    execution_time=elapsed,
                )
                self._events.emit("job:completed", done, result=result)
            return
        policy = self._retry_policies.get(job.id) or job.retry or self._default_retry
        retryable = is_retryable_error(error, policy)
        info = error_info(error, job.attempts, retryable=retryable)
        if retryable and job.attempts < job.max_attempts:
            delay = compute_delay(job.attempts, policy)
            if (
                await self._settle(
                    attempt, JobStatus.RETRYING, error=info, delay=delay, execution_time=elapsed
                )
                and self._events.active
            ):
                waiting = self._snapshot(job, ctx, status=JobStatus.RETRYING, last_error=info)
                self._events.emit("job:retrying", waiting, attempt=job.attempts, delay=delay)
            return
        status = JobStatus.TIMEOUT if timed_out else JobStatus.FAILED
        if await self._settle(attempt, status, error=info, execution_time=elapsed):
            self._remember_error(job.id, error)
            self._retry_policies.pop(job.id, None)
            if status is JobStatus.FAILED and self._events.active:
                failed = self._snapshot(job, ctx, status=status, last_error=info)
                self._events.emit("job:failed", failed, error=error)

    async def _settle(
        self,
        attempt: _Attempt,
        status: JobStatus,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        delay: float = 0.0,
        execution_time: float | None = None,
    ) -> bool:
        job = attempt.job
        attempt.settling = True
        # The handler is done: free its slot now, so the next claim can go out while
        # this write is in flight (a durable store batches both into few
        # transactions). The job stays RUNNING in the store until the write lands.
        self._release(attempt)
        self._writes += 1
        try:
            try:
                if self._in_process is not None:
                    return bool(
                        self._in_process.settle_nowait(
                            job.id,
                            worker_id=self._worker_id,
                            attempt=job.attempts,
                            status=status,
                            result=result,
                            error=error,
                            delay=delay,
                            execution_time=execution_time,
                        )
                    )
                return await self._storage.settle(
                    job.id,
                    worker_id=self._worker_id,
                    attempt=job.attempts,
                    status=status,
                    result=result,
                    error=error,
                    delay=delay,
                    execution_time=execution_time,
                )
            except TypeError as exc:
                if status is not JobStatus.COMPLETED:
                    raise
                # The result cannot be stored (a durable store needs JSON): the job
                # fails with that error rather than vanish.
                info = error_info(exc, job.attempts, retryable=False)
                return await self._storage.settle(
                    job.id,
                    worker_id=self._worker_id,
                    attempt=job.attempts,
                    status=JobStatus.FAILED,
                    error=info,
                    execution_time=execution_time,
                )
        except Exception as exc:
            self._report_error(f"recording job {job.id} as {status} failed", exc)
            return False
        finally:
            self._writes -= 1
            self._settled.unpark_all()
            if not self._writes:
                self._slot_freed.unpark_all()  # for _wait_until_idle

    def _release(self, attempt: _Attempt) -> None:
        """Free the attempt's slot and wake whoever waits for one or for a settle."""
        if self._running.pop(attempt.job.id, None) is not None:
            self._slot_freed.unpark_all()
        self._settled.unpark_all()

    def _cancel_attempt(self, attempt: _Attempt, reason: str) -> None:
        if attempt.reason is None:
            attempt.reason = reason
        attempt.scope.cancel()

    def _snapshot(self, job: Job[Any], ctx: JobContext[Any], **changes: Any) -> Job[Any]:
        base = ctx.job if ctx.job is not job else job
        return replace(base, **changes) if changes else base

    def _emit_final(
        self, event: str, job: Job[Any], ctx: JobContext[Any], *, status: JobStatus
    ) -> None:
        if self._events.active:
            self._events.emit(event, self._snapshot(job, ctx, status=status))

    def _remember_error(self, job_id: str, error: BaseException) -> None:
        errors = self._local_errors
        errors[job_id] = error
        if len(errors) > _LOCAL_ERRORS_KEPT:
            del errors[next(iter(errors))]

    # -- progress --------------------------------------------------------------------

    def _context_updated(self, ctx: JobContext[Any]) -> None:
        attempt = self._running.get(ctx.job.id)
        if attempt is None:
            return
        attempt.unsaved = ctx
        if self._events.active:
            self._events.emit("job:progress", ctx.job)
        if not attempt.writing and self._nursery is not None:
            attempt.writing = True
            self._nursery.start_soon(self._flush_progress, attempt)

    async def _flush_progress(self, attempt: _Attempt) -> None:
        attempt.writing = True
        try:
            while attempt.unsaved is not None:
                ctx, attempt.unsaved = attempt.unsaved, None
                try:
                    await self._storage.record_progress(
                        ctx.job.id,
                        worker_id=self._worker_id,
                        attempt=ctx.attempt,
                        progress=ctx.job.progress,
                        message=ctx.job.progress_message,
                        metadata=ctx.job.metadata,
                    )
                except Exception as exc:
                    self._report_error(f"recording progress of job {ctx.job.id} failed", exc)
        finally:
            attempt.writing = False

    # -- leases, cancellation requests, rescue ---------------------------------------

    async def _run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        interval = min(self._storage.lease_duration / 3, self._poll_interval)
        with self._services_scope:
            task_status.started()
            while True:
                await self._wait_for_cancel_requests(interval)
                try:
                    beat = await self._storage.heartbeat(self._worker_id, list(self._running))
                    for job_id in beat.cancel_requested:
                        if (attempt := self._running.get(job_id)) is not None:
                            self._cancel_attempt(attempt, "cancel")
                    for job_id in beat.lost:
                        attempt = self._running.get(job_id)
                        # A job settling right now is no longer held by anyone: not lost.
                        if attempt is not None and not attempt.settling:
                            self._logger.warning("lost the claim on job %s; abandoning it", job_id)
                            self._cancel_attempt(attempt, "lost")
                    if await self._storage.rescue_expired():
                        self._settled.unpark_all()
                except Exception as exc:
                    self._report_error("renewing leases failed", exc)

    async def _wait_for_cancel_requests(self, timeout: float) -> None:
        wait = getattr(self._storage, "wait_for_cancel_request", None)
        if wait is None:
            await trio.sleep(timeout)
        else:
            await wait(timeout)

    def _report_error(self, what: str, error: Exception) -> None:
        self._logger.error("%s: %r", what, error, exc_info=error)
        self._events.emit("runner:error", error=error)


def _single_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """Return the one exception inside ``group`` (however nested), or None if several."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else None


__all__ = ["JobRunner", "RunnerEvent"]
