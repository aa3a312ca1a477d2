"""One attempt of one job, and how its end is judged and written.

The attempt task (``_scheduler``) owns each :class:`Attempt` from claim to
settle; this module is what it calls once the handler has ended, and while it
runs. An :class:`Outcomes`, one per scheduler, judges how the handler ended
(``_outcome``) and writes it with the store's fenced ``settle``, shielded and
retried with backoff while the lease holds. It also stores the progress a
handler reports, through one writer task per attempt (only the newest progress
is written), and lets the last of it land before the outcome.

What the write keeps for later lives here too: the retry predicates a durable
store cannot keep, the original exceptions of jobs that failed here (for
``JobFailedError.__cause__``), and the count of claims that may have been left
RUNNING in the store (a write given up, a fence). The scheduler's own state (its
slots, its index of live attempts, the fences) stays in ``_scheduler``: an
``Outcomes`` reports a store that fails through the two callbacks it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from ._context import JobContext
from ._events import EventHub
from ._exceptions import JobTimeoutError, StorageCorruptError
from ._outcome import drop_frames, error_info, judge, unwrap
from ._records import ErrorInfo, Job, JobStatus, replace, utcnow
from ._retry import RetryConfig, compute_delay
from .storage._base import InProcessStorage, JobStorage

#: How many original exceptions of failed jobs are kept for ``JobFailedError.__cause__``.
_LOCAL_ERRORS_KEPT = 10_000
#: How many retry policies with a predicate are kept for jobs sent to a durable store.
_POLICIES_KEPT = 10_000
#: Backoff between tries of an outcome write that failed: first, factor, cap (seconds).
_WRITE_RETRY = (0.05, 2.0, 2.0)


@attrs.define(eq=False, slots=True)
class Attempt:
    """One attempt of one job, owned by the task that runs it.

    Identified by the object itself (and in the store by ``(job id, attempt)``):
    an older attempt of the same job still winding down is another object and
    never touches this one's bookkeeping.

    Its scope (``ctx.cancel_scope``, deadline: the job's timeout) is also how the
    runner cancels it: by request, on a forced stop, when the claim was lost, or
    when its lease would run out unrenewed (the *fence*, see
    ``Scheduler._run_fences`` in ``_scheduler``). Once the handler has returned,
    the same scope becomes the shield of the outcome write, with the lease's
    expiry as its deadline: one scope per attempt (each costs microseconds per job).
    """

    job: Job[Any]
    scope: trio.CancelScope
    #: Trio-clock time until which the store holds our lease (an underestimate).
    lease_until: float
    #: An older attempt of the same job still live in this runner: wait for it.
    previous: Attempt | None = None
    #: Why the runner cancelled the scope: "cancel" (user), "stop" (forced), "lost"
    #: (the store says the claim is gone), "fence" (the lease could not be renewed).
    reason: str | None = None
    #: Whether the attempt still holds a concurrency slot (until its handler ends).
    holds_slot: bool = True
    #: Whether the handler is still to return (a cancel after it changes nothing).
    handler_running: bool = True
    #: The shielded scope the outcome is being written in, once there is one.
    write_scope: trio.CancelScope | None = None
    #: Whether the outcome write has begun.
    settled: bool = False
    #: The handler's own KeyboardInterrupt/SystemExit: it counts as a failed attempt.
    fatal: BaseException | None = None
    #: The newest context whose progress/metadata is not stored yet.
    unsaved: JobContext[Any] | None = None
    #: Set when the task writing progress finishes; None while none is writing.
    writer: trio.Event | None = None
    #: Whether the attempt task has ended (given back all it held).
    ended: bool = False
    #: Set when the attempt task ends; created only when a successor waits for it.
    done: trio.Event | None = None

    def renewed(self, until: float) -> None:
        """The store holds the lease until ``until``: the fence and the write wait longer."""
        if until <= self.lease_until:
            return
        self.lease_until = until
        if self.write_scope is not None:
            self.write_scope.deadline = until

    def shield_for_writing(self, scope: trio.CancelScope, grace: float) -> trio.CancelScope:
        """Make ``scope`` (live, not cancelled) the write's shield, bounded by the lease.

        At least ``grace`` seconds from now, even where our estimate of the lease
        (counted from when the claim was sent) has run out: the deadline only
        bounds how long a write may wait; the store's fenced write is what refuses
        a claim that is no longer ours.
        """
        scope.shield = True
        scope.deadline = max(self.lease_until, trio.current_time() + grace)
        self.write_scope = scope
        return scope

    def cause(self, ended: float) -> str | None:
        """Why the attempt was cancelled by the time its handler ended, if it was.

        The runner's reason ("cancel", "stop", "lost", "fence"), else "timeout",
        or "self" (the handler cancelled it).
        """
        scope = self.scope
        if not scope.cancel_called:
            return None
        if self.reason is not None:
            return self.reason
        return "timeout" if ended >= scope.deadline else "self"


@final
class Outcomes:
    """Judges and writes the end of each attempt for one scheduler; see the module docs.

    ``report_error`` logs a failed store call and sends it as ``runner:error``;
    ``fatal`` is called with a :exc:`StorageCorruptError` (the runner ends with it).
    ``margin`` is the fences' margin: the least time an outcome write is given,
    even where our estimate of the lease has run out (a progress flush gives up
    half of it before the write's deadline).
    """

    def __init__(
        self,
        *,
        storage: JobStorage,
        default_retry: RetryConfig,
        events: EventHub,
        logger: logging.Logger,
        worker_id: str,
        margin: float,
        report_error: Callable[[str, Exception], None],
        fatal: Callable[[StorageCorruptError], None],
    ) -> None:
        self._storage = storage
        # An in-process store never blocks: its outcomes are written through its
        # checkpoint-free calls.
        self._in_process = storage if isinstance(storage, InProcessStorage) else None
        self._default_retry = default_retry
        self._events = events
        self._logger = logger
        self._worker_id = worker_id
        self._margin = margin
        self._report_error = report_error
        self._fatal = fatal
        #: Claims we may have left RUNNING in the store (a write given up, a fence).
        self.unsettled_claims = 0
        self._local_errors: dict[str, BaseException] = {}
        self._retry_policies: dict[str, RetryConfig] = {}

    # -- what the scheduler asks of it -----------------------------------------------

    def remember_policy(self, job: Job[Any]) -> None:
        """Keep a job's retry predicate, which a durable store cannot keep."""
        # An in-process store keeps the job object, predicate and all.
        if self._in_process is None and job.retry is not None and job.retry.is_retryable:
            policies = self._retry_policies
            policies[job.id] = job.retry
            if len(policies) > _POLICIES_KEPT:  # jobs that ended in other workers
                del policies[next(iter(policies))]

    def local_error(self, job_id: str) -> BaseException | None:
        """The original exception of a job that failed in this process, if kept."""
        return self._local_errors.get(job_id)

    def shield_for_writing(self, attempt: Attempt) -> trio.CancelScope:
        """A scope of its own shielding a write from outside cancellation (rare paths)."""
        return attempt.shield_for_writing(trio.CancelScope(), self._margin)

    def lease_ran_out(self, attempt: Attempt) -> None:
        """The lease ran out while the outcome was being written: the claim stays RUNNING."""
        self.unsettled_claims += 1
        self._logger.error(
            "recording job %s timed out; its lease will run out and the store will rescue it",
            attempt.job.id,
        )

    # -- the outcome -----------------------------------------------------------------

    async def conclude(
        self,
        attempt: Attempt,
        ctx: JobContext[Any],
        result: Any,
        error: BaseException | None,
        elapsed: float,
        cause: str | None,
        *,
        interrupted: bool = False,
    ) -> None:
        """Judge how the handler ended and write it; then tell the listeners."""
        job = attempt.job
        if attempt.writer is not None or attempt.unsaved is not None:
            await self._flush_progress(attempt)
        if cause == "cancel" or (cause == "self" and interrupted):
            # Cancelled by a request that came while the handler ran (cancel() said
            # True), or by the handler itself (``ctx.cancel_scope.cancel()``).
            if await self.write(attempt, JobStatus.CANCELLED, execution_time=elapsed):
                self._forget(job.id)
                if self._events.active:
                    self._events.emit(
                        "job:cancelled", self._snapshot(job, ctx, status=JobStatus.CANCELLED)
                    )
            return
        if error is None and not interrupted:
            # The handler returned: its result stands (a stop, a timeout or a lost
            # lease that came meanwhile changes nothing; a cancel after it returned
            # is refused).
            if await self.write(
                attempt, JobStatus.COMPLETED, result=result, execution_time=elapsed
            ):
                self._forget(job.id)
                if self._events.active:
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
        if cause in ("lost", "fence"):
            # The store says the claim is gone (rescued, deleted), or we could not
            # renew it: either way not ours to write. The job is rescued, its attempt
            # counted, once the lease runs out, as for a worker that died; a give-back
            # would let a store that cannot renew leases loop a job forever.
            attempt.settled = True
            self.unsettled_claims += 1
            return
        if cause == "stop":
            # An orderly shutdown is not the job's fault: back to PENDING, uncounted.
            await self.write(attempt, JobStatus.PENDING)
            return
        timed_out = cause == "timeout"
        if timed_out:
            error = JobTimeoutError(
                f"job {job.id} attempt {job.attempts} timed out after {job.timeout} s"
            )
            if self._events.active:
                self._events.emit("job:timeout", self._snapshot(job, ctx))
        assert error is not None
        error = unwrap(error)
        policy = self._policy(job)
        retryable = judge(
            error, self._judge_policy(policy), on_predicate_error=self._predicate_failed
        )
        info = error_info(error, job.attempts, retryable=retryable)
        if retryable and job.attempts < job.max_attempts:
            delay = compute_delay(job.attempts, policy)
            written = await self.write(
                attempt, JobStatus.RETRYING, error=info, delay=delay, execution_time=elapsed
            )
            if written and self._events.active:
                waiting = self._snapshot(job, ctx, status=JobStatus.RETRYING, last_error=info)
                self._events.emit("job:retrying", waiting, attempt=job.attempts, delay=delay)
            return
        status = JobStatus.TIMEOUT if timed_out else JobStatus.FAILED
        if await self.write(attempt, status, error=info, execution_time=elapsed):
            self._forget(job.id)
            self._remember_error(job.id, error)
            if status is JobStatus.FAILED and self._events.active:
                failed = self._snapshot(job, ctx, status=status, last_error=info)
                self._events.emit("job:failed", failed, error=error)

    def _policy(self, job: Job[Any]) -> RetryConfig:
        return self._retry_policies.get(job.id) or job.retry or self._default_retry

    def _judge_policy(self, policy: RetryConfig) -> RetryConfig:
        # A predicate cannot be stored: a job that arrives without one (submitted by
        # another process) is judged by this runner's default_retry predicate, if any.
        return policy if policy.is_retryable is not None else self._default_retry

    def _predicate_failed(self, exc: Exception) -> None:
        self._report_error(
            "a RetryConfig.is_retryable predicate raised; the heuristics decide", exc
        )

    async def write_abandoned(self, attempt: Attempt) -> None:
        """Write the end of an attempt left by a BaseException (shielded, bounded).

        The caller has given back the attempt's slot (the write does not hold it).
        """
        with self.shield_for_writing(attempt):
            await self._write_abandoned_unshielded(attempt)

    async def _write_abandoned_unshielded(self, attempt: Attempt) -> None:
        fatal = attempt.fatal
        if fatal is None:
            # Interrupted from outside (the runner is going down): not the job's
            # fault, so back to PENDING with the attempt not counted.
            await self.write(attempt, JobStatus.PENDING)
            return
        # The handler itself raised KeyboardInterrupt/SystemExit: the attempt counts,
        # so a job that kills its worker every time ends FAILED, not in a loop.
        job = attempt.job
        info = error_info(fatal, job.attempts, retryable=False)
        if job.attempts < job.max_attempts:
            delay = compute_delay(job.attempts, self._policy(job))
            await self.write(attempt, JobStatus.RETRYING, error=info, delay=delay)
        else:
            await self.write(attempt, JobStatus.FAILED, error=info)
            self._forget(job.id)

    async def write(
        self,
        attempt: Attempt,
        status: JobStatus,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        delay: float = 0.0,
        execution_time: float | None = None,
    ) -> bool:
        """Settle ``attempt`` as ``status`` in the store; True if the store applied it.

        Called inside a shield (the attempt's scope turned into one, or a scope of
        its own) whose deadline is the lease's expiry: once a handler is done its
        outcome is written even if the runner is being cancelled. A write that fails
        is tried again with backoff while the lease holds; after that the lease runs
        out and the store's rescue takes the job (its attempt counted), so nothing
        is lost either way.
        """
        attempt.settled = True
        job = attempt.job
        if self._in_process is not None:
            try:
                return self._in_process.settle_nowait(
                    job.id,
                    worker_id=self._worker_id,
                    attempt=job.attempts,
                    status=status,
                    result=result,
                    error=error,
                    delay=delay,
                    execution_time=execution_time,
                )
            except Exception as exc:
                self._report_error(f"recording job {job.id} as {status} failed", exc)
                return False
        fields: dict[str, Any] = {
            "worker_id": self._worker_id,
            "attempt": job.attempts,
            "status": status,
            "result": result,
            "error": error,
            "delay": delay,
            "execution_time": execution_time,
        }
        wait, factor, cap = _WRITE_RETRY
        while True:
            try:
                return await self._storage.settle(job.id, **fields)
            except TypeError as exc:
                if fields["status"] is not JobStatus.COMPLETED:
                    raise
                # The result cannot be stored (a durable store needs JSON): the job
                # fails with that error rather than vanish.
                fields |= {
                    "status": JobStatus.FAILED,
                    "result": None,
                    "error": error_info(exc, job.attempts, retryable=False),
                }
            except Exception as exc:
                # Keep trying while the write's window lasts: the lease (renewals push
                # it back), or the short grace a write always gets. A corrupt store
                # will not heal meanwhile: give up at once.
                window = attempt.write_scope.deadline if attempt.write_scope else math.inf
                if isinstance(exc, StorageCorruptError):
                    self.unsettled_claims += 1
                    self._fatal(exc)
                    return False
                if trio.current_time() + wait >= window:
                    self.unsettled_claims += 1
                    self._report_error(
                        f"recording job {job.id} as {status} failed; its lease will "
                        "run out and the store will rescue it",
                        exc,
                    )
                    return False
                self._logger.warning(
                    "recording job %s as %s failed (%r); trying again in %.2f s",
                    job.id,
                    status,
                    exc,
                    wait,
                )
                await trio.sleep(wait)
                wait = min(wait * factor, cap)

    def _snapshot(self, job: Job[Any], ctx: JobContext[Any], **changes: Any) -> Job[Any]:
        base = ctx.job if ctx.job is not job else job
        return replace(base, **changes) if changes else base

    def _forget(self, job_id: str) -> None:
        """The job is final: drop what was kept for its next attempt."""
        if self._retry_policies:
            self._retry_policies.pop(job_id, None)

    def _remember_error(self, job_id: str, error: BaseException) -> None:
        errors = self._local_errors
        errors[job_id] = drop_frames(error)
        if len(errors) > _LOCAL_ERRORS_KEPT:
            del errors[next(iter(errors))]

    # -- progress --------------------------------------------------------------------

    def context_updated(
        self,
        attempt: Attempt,
        ctx: JobContext[Any],
        progress: bool,
        nursery: trio.Nursery | None,
    ) -> None:
        """The handler changed its progress or metadata: store it (the writer's nursery)."""
        if not attempt.handler_running:
            return
        attempt.unsaved = ctx
        if progress and self._events.active:
            self._events.emit("job:progress", ctx.job)
        if attempt.writer is None and nursery is not None:
            attempt.writer = trio.Event()
            nursery.start_soon(self._write_progress, attempt)

    async def _write_progress(self, attempt: Attempt) -> None:
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
            done, attempt.writer = attempt.writer, None
            if done is not None:
                done.set()

    async def _flush_progress(self, attempt: Attempt) -> None:
        """Let the last progress land before the outcome, through the one writer.

        Two concurrent writes could land in either order. Called inside the shield
        of the outcome write that follows, and given up half a margin before that
        shield's deadline: a progress write that stalls must not cost the outcome
        its window (the late write is then refused, its claim settled; only the
        last progress is lost, not the result).
        """
        with trio.CancelScope() as scope:
            if attempt.write_scope is not None:
                scope.deadline = attempt.write_scope.deadline - self._margin / 2
            while attempt.writer is not None or attempt.unsaved is not None:
                if attempt.writer is not None:
                    await attempt.writer.wait()
                else:
                    attempt.writer = trio.Event()
                    await self._write_progress(attempt)
        if scope.cancelled_caught:
            self._logger.warning(
                "recording progress of job %s is still in flight; writing its outcome first",
                attempt.job.id,
            )
