"""The engine inside a runner: claims jobs, runs each attempt in its own scope, settles them.

:class:`JobRunner` is the public face (lifecycle, submit, reads, events); this
module is the work: a scheduler loop that claims the best ready jobs whenever a
slot is free, one task per attempt with its own :class:`trio.CancelScope`, the
outcome of each attempt decided and written through the store's fenced
``settle``, and a services loop for leases, cancellation requests and rescue.
The slot accounting lives here, in one place: ``running`` and ``concurrency``.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, final

import attrs
import trio

from ._context import JobContext
from ._events import EventHub
from ._exceptions import JobTimeoutError
from ._records import ErrorInfo, Job, JobStatus, replace, utcnow
from ._retry import RetryConfig, compute_delay, is_retryable_error
from .storage._base import InProcessStorage, JobStorage

Handler = Callable[[Job[Any], JobContext[Any]], Awaitable[Any]]

#: How many original exceptions of failed jobs are kept for ``JobFailedError.__cause__``.
_LOCAL_ERRORS_KEPT = 10_000


def error_info(error: BaseException, attempt: int, *, retryable: bool) -> ErrorInfo:
    """Record ``error`` as an :class:`ErrorInfo`."""
    cls = type(error)
    module = cls.__module__
    if module == "builtins":
        name = cls.__qualname__
    elif module.startswith("trio_jobs."):
        name = f"trio_jobs.{cls.__qualname__}"  # our errors by their public name
    else:
        name = f"{module}.{cls.__qualname__}"
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
    #: The newest context snapshot whose progress/metadata is not stored yet.
    unsaved: JobContext[Any] | None = None
    #: Set when the task writing progress finishes; None while none is writing.
    progress_writer: trio.Event | None = None


@final
class Scheduler:
    """Claims and runs jobs for one runner; see the module docs."""

    def __init__(
        self,
        *,
        storage: JobStorage,
        handlers: dict[str, Handler],
        concurrency: int,
        poll_interval: float,
        default_retry: RetryConfig,
        events: EventHub,
        logger: logging.Logger,
        worker_id: str,
    ) -> None:
        self._storage = storage
        # An in-process store sees every change and never blocks: the scheduler waits
        # on it without polling and skips a trip through Trio's scheduler per job.
        self._in_process = storage if isinstance(storage, InProcessStorage) else None
        self._handlers = handlers
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._default_retry = default_retry
        self._events = events
        self._logger = logger
        self._worker_id = worker_id
        #: The job types to claim (those with a handler).
        self.types: frozenset[str] = frozenset()
        self.nursery: trio.Nursery | None = None
        #: Whether new jobs may start.
        self.accepting = True
        #: The attempts holding a slot, by job id.
        self.running: dict[str, _Attempt] = {}
        #: Attempts whose outcome is being written (their slots are already free).
        self.writing: dict[str, _Attempt] = {}
        #: Whether the last claim found fewer ready jobs than it asked for.
        self.store_dry = False
        self.slot_freed = trio.lowlevel.ParkingLot()
        #: Woken whenever an attempt's outcome was written (or the runner stopped).
        self.settled = trio.lowlevel.ParkingLot()
        self._force = False
        self._scheduler_scope = trio.CancelScope()
        self._services_scope = trio.CancelScope()
        self._local_errors: dict[str, BaseException] = {}
        self._retry_policies: dict[str, RetryConfig] = {}

    # -- what the runner asks of it --------------------------------------------------

    def remember_policy(self, job: Job[Any]) -> None:
        """Keep a job's retry policy when it has a predicate (which the store cannot keep)."""
        if job.retry is not None and job.retry.is_retryable is not None:
            self._retry_policies[job.id] = job.retry

    def local_error(self, job_id: str) -> BaseException | None:
        """The original exception of a job that failed in this process, if kept."""
        return self._local_errors.get(job_id)

    def cancel_job(self, job_id: str) -> None:
        """Cancel the job's running attempt here, if it has one."""
        attempt = self.running.get(job_id)
        if attempt is not None:
            self.cancel_attempt(attempt, "cancel")

    def stop_claiming(self) -> None:
        """Start nothing new."""
        self.accepting = False
        self._scheduler_scope.cancel()

    def force_stop(self) -> None:
        """Cancel every running attempt; their jobs go back to PENDING, uncounted."""
        if self._force:
            return
        self._force = True
        for attempt in self.running.values():
            if attempt.reason is None:
                attempt.reason = "stop"
            attempt.scope.cancel()

    async def wait_until_idle(self) -> None:
        """Wait until no attempt runs and no outcome is being written."""
        while self.running or self.writing:
            await self.slot_freed.park()

    def stop_services(self) -> None:
        """Stop renewing leases (call once nothing runs)."""
        self._services_scope.cancel()
        self.settled.unpark_all()

    # -- the scheduler ---------------------------------------------------------------

    def _free_slots(self) -> int:
        """How many jobs to claim now: free slots, less any backlog of outcome writes.

        A slot frees when its handler returns, before the outcome is written, so
        the next claim overlaps the write; but at most one round of writes may be
        in flight, or a slow store would let claims run far ahead of it.
        """
        running = len(self.running)
        backlog = max(0, len(self.writing) - self._concurrency)
        return self._concurrency - running - backlog

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        storage = self._storage
        claim_nowait = self._in_process.claim_nowait if self._in_process is not None else None
        idle_wait = math.inf if claim_nowait is not None else self._poll_interval
        # A store that can claim the moment work is announced (PostgresStorage).
        wait_and_claim: Callable[..., Awaitable[list[Job[Any]] | None]] | None = getattr(
            storage, "wait_and_claim", None
        )
        with self._scheduler_scope:
            task_status.started()
            while True:
                free = self._free_slots()
                if free <= 0:
                    await self.slot_freed.park()
                    continue
                try:
                    if claim_nowait is not None:
                        # Never blocks; the loop checkpoints when it parks or waits,
                        # which it does at the latest on the next turn.
                        jobs = claim_nowait(self._worker_id, free, self.types)
                    else:
                        jobs = await storage.claim(self._worker_id, free, self.types)
                except Exception as exc:
                    self._report_error("claiming jobs failed", exc)
                    await trio.sleep(self._poll_interval)
                    continue
                self.store_dry = len(jobs) < free
                if not jobs and wait_and_claim is not None:
                    jobs = await wait_and_claim(self._worker_id, free, self.types, idle_wait) or []
                if jobs:
                    for job in jobs:
                        self._start(job)
                elif wait_and_claim is None:
                    await storage.wait_for_work(idle_wait)

    def dispatch(self, store: InProcessStorage) -> None:
        """Start the best ready jobs in the free slots, or leave the scheduler a wake-up."""
        free = self._free_slots()
        if free > 0 and self.accepting:
            for job in store.claim_nowait(self._worker_id, free, self.types):
                self._start(job)
        else:
            store.wake()

    def _start(self, job: Job[Any]) -> None:
        assert self.nursery is not None
        timeout = job.timeout
        scope = trio.CancelScope(
            deadline=math.inf if timeout is None else trio.current_time() + timeout
        )
        attempt = _Attempt(job, scope)
        self.running[job.id] = attempt
        if self._force:
            attempt.reason = "stop"
            scope.cancel()
        self.nursery.start_soon(self._run_attempt, attempt)

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
        # The last progress lands before the outcome, through one writer at a time
        # (two concurrent writes could land in either order).
        while attempt.progress_writer is not None or attempt.unsaved is not None:
            if attempt.progress_writer is not None:
                await attempt.progress_writer.wait()
            else:
                attempt.progress_writer = trio.Event()
                await self._write_progress(attempt)
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
        # A predicate cannot be stored: a job that arrives without one (submitted by
        # another process) is judged by this runner's default_retry predicate, if any.
        judge = policy if policy.is_retryable is not None else self._default_retry
        retryable = is_retryable_error(error, judge)
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
        # The handler is done: free its slot now, so the next claim can go out while
        # this write is in flight (a durable store batches both into few
        # transactions). The job stays RUNNING in the store until the write lands.
        self._release(attempt)
        self.writing[job.id] = attempt
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
            del self.writing[job.id]
            if self.settled:
                self.settled.unpark_all()
            if self.slot_freed:
                self.slot_freed.unpark_all()  # for the scheduler and wait_until_idle

    def _release(self, attempt: _Attempt) -> None:
        """Free the attempt's slot and wake whoever waits for one or for a settle."""
        if self.running.pop(attempt.job.id, None) is not None and self.slot_freed:
            self.slot_freed.unpark_all()
        if self.settled:
            self.settled.unpark_all()

    def cancel_attempt(self, attempt: _Attempt, reason: str) -> None:
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
        attempt = self.running.get(ctx.job.id)
        if attempt is None:
            return
        attempt.unsaved = ctx
        if self._events.active:
            self._events.emit("job:progress", ctx.job)
        if attempt.progress_writer is None and self.nursery is not None:
            attempt.progress_writer = trio.Event()
            self.nursery.start_soon(self._write_progress, attempt)

    async def _write_progress(self, attempt: _Attempt) -> None:
        """Store the newest unsaved progress until none is left (the only writer)."""
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
            done, attempt.progress_writer = attempt.progress_writer, None
            if done is not None:
                done.set()

    # -- leases, cancellation requests, rescue ---------------------------------------

    async def run_services(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        interval = min(self._storage.lease_duration / 3, self._poll_interval)
        with self._services_scope:
            task_status.started()
            while True:
                await self._wait_for_cancel_requests(interval)
                try:
                    # Jobs whose outcome is being written are still ours until it lands.
                    held = [*self.running, *self.writing]
                    beat = await self._storage.heartbeat(self._worker_id, held)
                    for job_id in beat.cancel_requested:
                        if (attempt := self.running.get(job_id)) is not None:
                            self.cancel_attempt(attempt, "cancel")
                    for job_id in beat.lost:
                        # (A job whose outcome is being written is not in running.)
                        attempt = self.running.get(job_id)
                        if attempt is not None:
                            self._logger.warning("lost the claim on job %s; abandoning it", job_id)
                            self.cancel_attempt(attempt, "lost")
                    if await self._storage.rescue_expired():
                        self.settled.unpark_all()
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
