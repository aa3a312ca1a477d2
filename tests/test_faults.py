"""Fault injection: the engine's promises under faults (API.md), checked by force.

Three parts:

- unit tests of :class:`FaultyStorage` (``tests/faulty_storage.py``);
- one deterministic regression test per known defect of issue 11, named after the
  behaviour it wants;
- a randomized Hypothesis test that drives a runner with hostile handlers,
  callbacks, retry predicates, cancellations, stops and store faults, and checks
  the invariants after every example, on MemoryStorage (virtual time) and on
  SQLiteStorage (real time). By default a modest, derandomized run (deterministic
  for CI); ``TRIO_JOBS_FAULT_EXAMPLES=2000`` runs that many examples (an eighth of
  them on SQLite).

Every run happens in :func:`run_trio`: ``trio.run`` in a worker thread, watched. A
runner that hangs in a *shielded* wait cannot be cancelled by ``fail_after``, and
with a ``MockClock`` nothing would ever wake it; the watchdog notices (in virtual
time) and the test fails with :class:`Hung`, abandoning the stuck thread rather
than the whole test session. The thread also keeps a ``KeyboardInterrupt`` raised
by a handler from reaching pytest as if the user had pressed Ctrl-C.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import outcome
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faulty_storage import Call, FaultyStorage, Switch
from trio_jobs import (
    Job,
    JobCancelledError,
    JobContext,
    JobFailedError,
    JobHandle,
    JobRunner,
    JobStatus,
    JobTimeoutError,
    MemoryStorage,
    RetryConfig,
    RetryStrategy,
    RunnerStoppedError,
    SQLiteStorage,
    is_retryable_error,
)

#: The runner logs every injected failure: a logger outside the hierarchy, with a
#: level above CRITICAL, drops those records before they are even built.
QUIET = logging.Logger("trio_jobs.test_faults", level=logging.CRITICAL + 1)
QUIET.addHandler(logging.NullHandler())


# -- the harness ---------------------------------------------------------------------


class Hung(AssertionError):
    """The run did not finish within its bound (a deadlock, or a shielded wait forever)."""


def run_trio(
    fn: Callable[[], Awaitable[Any]],
    *,
    clock: trio.abc.Clock | None = None,
    hang_after: float,
    real_limit: float = 300.0,
) -> outcome.Outcome[Any]:
    """Run ``fn`` under ``trio.run`` in a worker thread; return its outcome.

    Raises:
        Hung: ``fn`` had not returned after ``hang_after`` seconds on the run's
            clock (virtual with a ``MockClock``), or ``real_limit`` real seconds.
            The stuck thread is abandoned (it is a daemon and blocks forever).
    """
    box: dict[str, Any] = {}
    finished = threading.Event()

    async def main() -> None:
        async def watchdog() -> None:
            await trio.sleep(hang_after)
            box["hung"] = True
            finished.set()
            if isinstance(clock, trio.testing.MockClock):
                # With nothing left to jump to, autojump would spin the stuck thread.
                clock.autojump_threshold = math.inf

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog)
            box["outcome"] = await outcome.acapture(fn)
            nursery.cancel_scope.cancel()

    def thread() -> None:
        try:
            trio.run(main, clock=clock)
        except BaseException as exc:  # pragma: no cover - a harness bug
            box.setdefault("outcome", outcome.Error(exc))
        finished.set()

    worker = threading.Thread(target=thread, name="trio-under-test", daemon=True)
    worker.start()
    if not finished.wait(real_limit) or box.get("hung"):
        raise Hung(f"still running after {hang_after} s on its clock (or {real_limit} s real)")
    worker.join()
    result: outcome.Outcome[Any] = box["outcome"]
    return result


def virtual() -> trio.testing.MockClock:
    """A clock that jumps ahead whenever every task sleeps."""
    return trio.testing.MockClock(autojump_threshold=0)


async def ok(job: Job[Any], ctx: JobContext[Any]) -> str:
    await trio.sleep(1)
    return "ok"


# -- FaultyStorage itself --------------------------------------------------------------


async def test_a_rule_on_the_nth_call_raises_there_only() -> None:
    faulty = FaultyStorage(MemoryStorage())
    error = OSError("disk I/O error")
    faulty.fail("get", error, nth=2)
    assert await faulty.get("a") is None
    with pytest.raises(OSError) as info:
        await faulty.get("b")
    assert info.value is error
    assert await faulty.get("c") is None
    assert [c.outcome for c in faulty.calls_to("get")] == [
        "ok",
        f"raised {error!r}",
        "ok",
    ]
    assert faulty.raised == [error]


async def test_a_raise_after_the_call_applies_it_and_loses_the_answer() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner)
    faulty.fail("save", ConnectionResetError, after=True)
    with pytest.raises(ConnectionResetError):
        await faulty.save(Job(id="j", type="t"))
    assert await inner.get("j") is not None
    assert faulty.calls[-1].applied


async def test_a_stall_holds_the_call_until_released() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.stall("count_unfinished")
    answers: list[int] = []

    async def count() -> None:
        answers.append(await faulty.count_unfinished())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count)
        await faulty.wait_stalled("count_unfinished")
        await trio.sleep(0.01)
        assert answers == []
        faulty.clear()
    assert answers == [0]


async def test_a_stall_is_cancellable_unless_shielded() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner)
    faulty.stall("save", 10.0)
    with trio.move_on_after(0.01):
        await faulty.save(Job(id="a", type="t"))
    assert await inner.get("a") is None
    faulty.clear()
    # Shielded: like a store call in a worker thread, it applies, and the caller sees
    # the cancellation at its next checkpoint.
    faulty.stall("save", 0.05, shielded=True)
    with trio.move_on_after(0.01) as scope:
        await faulty.save(Job(id="b", type="t"))
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert await inner.get("b") is not None


@pytest.mark.parametrize("after", [False, True])
async def test_a_cancel_rule_cancels_the_scope_around_the_call(after: bool) -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner)
    with trio.CancelScope() as scope:
        faulty.cancel("save", scope=scope, after=after)
        await faulty.save(Job(id="a", type="t"))
    assert scope.cancelled_caught
    assert faulty.calls[-1].outcome == "cancelled"
    assert (await inner.get("a") is not None) is after


async def test_probabilistic_rules_are_deterministic_for_a_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        faulty = FaultyStorage(MemoryStorage(), rng=random.Random(seed))
        rule = faulty.fail("get", OSError, probability=0.3)
        seen = []
        for _ in range(50):
            before = rule.fired
            rule.fires(faulty.rng)
            seen.append(rule.fired > before)
        return seen

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 5 < sum(pattern(7)) < 30


async def test_a_switch_turns_a_rule_on_and_off() -> None:
    faulty = FaultyStorage(MemoryStorage())
    switch = Switch()
    faulty.fail("get", OSError, switch=switch)
    await faulty.get("a")
    switch.on = True
    with pytest.raises(OSError):
        await faulty.get("a")
    switch.on = False
    await faulty.get("a")


def test_the_wrapper_hides_the_in_process_fast_paths() -> None:
    from trio_jobs.storage._base import InProcessStorage, JobStorage

    faulty = FaultyStorage(MemoryStorage())
    assert isinstance(faulty, JobStorage)
    assert not isinstance(faulty, InProcessStorage)
    assert hasattr(faulty, "wait_for_cancel_request")  # MemoryStorage has it
    assert not hasattr(faulty, "wait_and_claim")  # MemoryStorage has not
    assert not hasattr(faulty, "claim_nowait")


async def test_a_runner_works_through_the_wrapper(autojump_clock: Any) -> None:
    faulty = FaultyStorage(MemoryStorage())
    async with JobRunner(storage=faulty, logger=QUIET) as runner:
        runner.register_handler("x", ok)
        handles = [await runner.submit("x") for _ in range(5)]
    assert [await h.wait() for h in handles] == ["ok"] * 5
    assert {c.method for c in faulty.calls} >= {"claim", "settle", "save"}


# -- one regression test per known defect (issue 11) ----------------------------------
#
# Each runs the scenario in ``run_trio``, so that a hang fails the test instead of
# hanging the session. Each failed on d3a16c1, the scheduler before the redesign.

HANG = 3600.0  # virtual seconds: far beyond anything these scenarios need


# Regression: defect 1 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_a_started_callback_raising_systemexit_does_not_hang_the_runner() -> None:
    boom = SystemExit(3)

    def explode(job: Job[Any]) -> None:
        raise boom

    async def scenario() -> None:
        runner = JobRunner(logger=QUIET)
        runner.register_handler("x", ok)
        runner.on("job:started", explode)
        with pytest.raises(SystemExit) as info:
            async with runner:
                await runner.submit("x")
        assert info.value is boom

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 1 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_an_is_retryable_predicate_that_raises_does_not_hang_the_runner() -> None:
    def broken(error: BaseException) -> bool:
        raise RuntimeError("a bug in the predicate")

    async def invalid(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise ValueError("invalid input")

    async def scenario() -> None:
        async with JobRunner(logger=QUIET) as runner:
            runner.register_handler("x", invalid)
            handle = await runner.submit("x", retry=RetryConfig(is_retryable=broken))
        # The predicate failed: the heuristics decide ("invalid input": not retryable).
        job = await handle.get_status()
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1)

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 1 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_a_cancelled_wait_for_the_last_progress_write_does_not_hang_the_runner() -> None:
    async def scenario() -> None:
        faulty = FaultyStorage(MemoryStorage())
        faulty.stall("record_progress")  # a slow store: the write is still in flight
        returned = trio.Event()

        async def reporting(job: Job[Any], ctx: JobContext[Any]) -> str:
            ctx.report_progress(50.0)
            returned.set()
            return "done"

        with trio.CancelScope() as outer:
            async with JobRunner(storage=faulty, logger=QUIET) as runner:
                runner.register_handler("x", reporting)
                handle = await runner.submit("x")
                await returned.wait()
                await faulty.wait_stalled("record_progress")
                outer.cancel()  # the user's code around the runner is cancelled
                faulty.clear()  # the store answers again (for a shielded cleanup)
        assert outer.cancelled_caught
        job = await handle.get_status()
        assert job.status in (JobStatus.COMPLETED, JobStatus.PENDING)

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 2 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_an_attempt_whose_lease_lapsed_is_not_run_twice_at_once() -> None:
    async def scenario() -> None:
        inner = MemoryStorage(lease_duration=3.0)
        faulty = FaultyStorage(inner)
        store_down = Switch(on=True)
        faulty.fail("heartbeat", lambda: OSError("store unreachable"), switch=store_down)
        live: dict[str, int] = {}
        most = 0

        async def long(job: Job[Any], ctx: JobContext[Any]) -> str:
            nonlocal most
            live[job.id] = live.get(job.id, 0) + 1
            most = max(most, live[job.id])
            try:
                await trio.sleep(20)
            finally:
                live[job.id] -= 1
            return "done"

        async with JobRunner(concurrency=2, poll_interval=1.0, storage=faulty, logger=QUIET) as r:
            r.register_handler("x", long)
            await r.submit("x")
            await trio.sleep(5)  # the lease (3 s) lapsed: nobody could renew it
            await inner.rescue_expired()  # another worker rescues the job
            store_down.on = False
        assert most == 1

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 4 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_a_claim_in_flight_when_stop_returns_starts_no_handler() -> None:
    async def scenario() -> None:
        faulty = FaultyStorage(MemoryStorage())
        slow_claims = Switch()
        # Uninterruptible, like a claim running in a worker thread (SQLiteStorage).
        faulty.stall("claim", shielded=True, switch=slow_claims)
        started_after_stop = []
        stopped = False

        async def note(job: Job[Any], ctx: JobContext[Any]) -> None:
            started_after_stop.append(stopped)

        async def answer_the_claim() -> None:
            # stop() waits for the scheduler task, and so for the claim in flight:
            # it lands while stop() waits.
            await trio.testing.wait_all_tasks_blocked()
            slow_claims.on = False
            faulty.release()

        async with JobRunner(storage=faulty, logger=QUIET) as runner:
            runner.register_handler("x", note)
            slow_claims.on = True
            handle = await runner.submit("x")
            await faulty.wait_stalled("claim")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_the_claim)
                await runner.stop()
            stopped = True
            await trio.sleep(1)
        assert started_after_stop == []
        job = await handle.get_status()
        assert (job.status, job.attempts) == (JobStatus.PENDING, 0)

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 6 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_a_cancel_after_the_handler_returned_keeps_the_result() -> None:
    async def scenario() -> None:
        faulty = FaultyStorage(MemoryStorage())
        faulty.stall("record_progress")
        returned = trio.Event()

        async def reporting(job: Job[Any], ctx: JobContext[Any]) -> str:
            ctx.report_progress(100.0)
            returned.set()
            return "done"

        async with JobRunner(storage=faulty, logger=QUIET) as runner:
            runner.register_handler("x", reporting)
            handle = await runner.submit("x")
            await returned.wait()
            await faulty.wait_stalled("record_progress")
            cancelled = await handle.cancel()
            faulty.clear()
            assert await handle.wait() == "done"
        assert cancelled is False

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 8 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_stop_called_inside_a_handler_does_not_deadlock() -> None:
    async def scenario() -> None:
        runner = JobRunner(logger=QUIET)

        async def stopper(job: Job[Any], ctx: JobContext[Any]) -> str:
            await runner.stop()
            return "stopped"

        runner.register_handler("x", stopper)
        with trio.fail_after(60):
            async with runner:
                handle = await runner.submit("x")
        assert await handle.wait() == "stopped"

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: defect 9 of issue 11 (failed on d3a16c1, before the engine redesign).
@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_handler_raising_systemexit_counts_its_attempt(tmp_path: Path, max_attempts: int) -> None:
    async def dies(job: Job[Any], ctx: JobContext[Any]) -> None:
        raise SystemExit(1)

    async def scenario() -> None:
        runner = JobRunner(storage=SQLiteStorage(tmp_path / "jobs.db"), logger=QUIET)
        runner.register_handler("x", dies)
        with pytest.raises(SystemExit):
            async with runner:
                handle = await runner.submit("x", retry={"max_attempts": max_attempts})
        async with SQLiteStorage(tmp_path / "jobs.db") as store:
            job = await store.get(handle.id)
        assert job is not None
        expected = JobStatus.FAILED if max_attempts == 1 else JobStatus.RETRYING
        assert (job.status, job.attempts) == (expected, 1)
        assert job.last_error is not None
        assert job.last_error.type == "SystemExit"

    run_trio(scenario, hang_after=60.0).unwrap()


# Regression: defect 10 of issue 11 (failed on d3a16c1, before the engine redesign).
def test_a_group_of_one_forbidden_error_is_not_retried() -> None:
    forbidden = PermissionError("403 forbidden")

    async def fetch(job: Job[Any], ctx: JobContext[Any]) -> None:
        async def get() -> None:
            raise forbidden

        async with trio.open_nursery() as nursery:  # raises ExceptionGroup([forbidden])
            nursery.start_soon(get)

    async def scenario() -> None:
        async with JobRunner(logger=QUIET) as runner:
            runner.register_handler("x", fetch)
            handle = await runner.submit("x", retry={"max_attempts": 3, "base_delay": 0.0})
        with pytest.raises(JobFailedError) as info:
            await handle.wait()
        job = await handle.get_status()
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1)
        assert info.value.error_info.type == "PermissionError"
        assert info.value.error_info.message == "403 forbidden"
        assert info.value.__cause__ is forbidden

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: found by the randomized test below on d3a16c1 (issue 11).
def test_a_result_whose_settle_is_interrupted_by_cancellation_still_lands() -> None:
    async def scenario() -> None:
        faulty = FaultyStorage(MemoryStorage())
        faulty.stall("settle")  # a slow store: the outcome is being written
        with trio.CancelScope() as outer:
            async with JobRunner(storage=faulty, logger=QUIET) as runner:
                runner.register_handler("x", ok)
                handle = await runner.submit("x")
                await faulty.wait_stalled("settle")
                outer.cancel()  # the user's code around the runner is cancelled
                faulty.clear()  # the store answers again (for a shielded cleanup)
        job = await handle.get_status()
        assert (job.status, job.result) == (JobStatus.COMPLETED, "ok")

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# Regression: found by the randomized test below (3,000 examples) on 6858614. A
# progress write that stalls past the lease, uninterruptibly, while the runner is
# cancelled: the outcome waited for it until its window closed and the job was left
# RUNNING, with no rescuer in sight. The last progress is worth waiting for, but
# not at the price of the outcome.
def test_a_stalled_progress_write_does_not_cost_the_outcome_its_window() -> None:
    async def scenario() -> None:
        faulty = FaultyStorage(MemoryStorage(lease_duration=3.0))
        faulty.stall("record_progress", 5.0, shielded=True)  # longer than the lease
        returned = trio.Event()

        async def reporting(job: Job[Any], ctx: JobContext[Any]) -> str:
            await trio.sleep(1)
            ctx.report_progress(90.0)
            returned.set()
            return "done"

        with trio.CancelScope() as outer:
            async with JobRunner(storage=faulty, logger=QUIET) as runner:
                runner.register_handler("x", reporting)
                handle = await runner.submit("x")
                await returned.wait()
                outer.cancel()  # the user's code around the runner is cancelled
        assert outer.cancelled_caught
        job = await handle.get_status()
        assert (job.status, job.result) == (JobStatus.COMPLETED, "done")

    run_trio(scenario, clock=virtual(), hang_after=HANG).unwrap()


# -- the randomized test ---------------------------------------------------------------
#
# Hypothesis draws a Plan: jobs whose handler does something different at each
# attempt, operations from outside at given times, event callbacks that raise,
# store faults, and how the block ends. run_plan plays it and check_run asserts
# the promises of API.md ("The engine's promises under faults"). Each promise is
# its own assert line, so Hypothesis reports each broken one as a distinct bug.
#
# Time: with MemoryStorage the clock is virtual (MockClock, autojump) and one
# "unit" of the plan is one second. SQLiteStorage uses worker threads, which a
# jumping clock would race past, so it runs on real time with a unit of 20 ms.
#
# The rule for RUNNING jobs left after the block (durable store or not): the
# runner settles or gives back every attempt it started, in cleanup, so a job may
# be left RUNNING only when the store itself failed (a fault fired on a claim, a
# settle, or on what keeps the lease: heartbeat, the services loop's waits,
# rescue), since a runner that lost its lease may leave the job to a rescue. Even
# then its lease must lapse: nobody renews it once the runner is gone, so
# ``rescue_expired`` recovers it after ``lease_duration`` (the attempt counted, as
# for a crashed worker).

STEP_KINDS = [
    "return",  # sleep, maybe report progress, return a value
    "raise",  # sleep, then raise an Exception (maybe inside an ExceptionGroup)
    "hang",  # sleep past the timeout
    "exit",  # raise SystemExit
    "interrupt",  # raise KeyboardInterrupt
    "cancel_self",  # ctx.cancel_scope.cancel()
    "stop",  # await runner.stop() from inside the handler
    "stop_now",  # await runner.stop(graceful=False) from inside the handler
]
ERRORS: dict[str, Callable[[], Exception]] = {
    "boom": lambda: RuntimeError("boom"),  # retryable by the heuristics
    "reset": lambda: ConnectionResetError("connection reset by peer"),  # retryable
    "invalid": lambda: ValueError("invalid input"),  # not retryable
    "forbidden": lambda: PermissionError("403 forbidden"),  # not retryable
}
WRAPS = ["bare", "group", "nested", "pair"]
PREDICATES: dict[str, Callable[[BaseException], bool] | None] = {
    "none": None,
    "always": lambda error: True,
    "never": lambda error: False,
    "connection": lambda error: isinstance(error, ConnectionError),
    "raises": lambda error: _raise(RuntimeError("a bug in the predicate")),
    "exits": lambda error: _raise(SystemExit("the predicate exits")),
}
EVENTS = ["job:started", "job:completed", "job:retrying", "job:failed", "job:progress"]
# The calls the engine makes on its own (the caller-facing ones, like save or
# request_cancel, surface their errors to the caller by design).
FAULTY_METHODS = [
    "claim",
    "settle",
    "record_progress",
    "heartbeat",
    "rescue_expired",
    "wait_for_work",
    "wait_for_cancel_request",
]
FAULT_ACTIONS = [
    "raise",
    "raise_after",
    "stall",
    "stall_shielded",
    "cancel",
    "cancel_after",
    "interrupt",
]
STORE_ERRORS: list[Callable[[], Exception]] = [
    lambda: OSError("disk I/O error"),
    lambda: sqlite3.OperationalError("database is locked"),
    lambda: ConnectionResetError("server closed the connection"),
]
#: Faults on these can make a lease lapse or a settle vanish, which legitimately
#: changes how a job ends (rescued and run again, counted).
LEASE_METHODS = {"settle", "heartbeat", "rescue_expired", "wait_for_cancel_request"}
OP_KINDS = [
    "handle_cancel",  # handle.cancel()
    "runner_cancel",  # runner.cancel(id)
    "cancel_on_return",  # from now on, handle.cancel() the moment the job's handler returns
    "stop",
    "stop_now",
    "cancel_block",  # cancel the scope around the runner's block
]


def _raise(error: BaseException) -> bool:
    raise error


@attrs.frozen
class Step:
    """What one attempt of a job does."""

    kind: str = "return"
    seconds: float = 1.0
    error: str = "boom"
    wrap: str = "bare"
    progress: str = "none"  # "none", "start", "end", "both"


@attrs.frozen
class JobPlan:
    """A job: its attempts' steps (then "return"), retry policy, timeout, delay."""

    steps: tuple[Step, ...] = ()
    max_attempts: int = 3
    timeout: float = 10.0
    base_delay: float = 1.0
    predicate: str = "none"
    delay: float = 0.0


@attrs.frozen
class Op:
    """Something done from outside the handlers, ``at`` units after the submits."""

    at: float
    kind: str
    job: int = 0


@attrs.frozen
class CallbackPlan:
    """An event callback that raises at its ``nth`` call."""

    event: str
    nth: int
    exits: bool  # SystemExit, else RuntimeError


@attrs.frozen
class FaultPlan:
    """A FaultyStorage rule."""

    method: str
    action: str
    trigger: str  # "nth", "probability", "window"
    n: int = 1
    probability: float = 0.3
    seconds: float = 1.0  # a stall's length
    window: tuple[float, float] = (0.0, 5.0)  # when a "window" rule is on
    error: int = 0  # index in STORE_ERRORS


@attrs.frozen
class Plan:
    """Everything one example does."""

    concurrency: int = 2
    poll: float = 1.0
    lease: float = 10.0
    jobs: tuple[JobPlan, ...] = (JobPlan(),)
    ops: tuple[Op, ...] = ()
    callbacks: tuple[CallbackPlan, ...] = ()
    faults: tuple[FaultPlan, ...] = ()
    rescuer: bool = False  # another worker's rescue_expired() runs meanwhile
    ending: str = "drain"  # "drain", "stop", "stop_now"
    seed: int = 0


def weighted(choices: dict[Any, int]) -> st.SearchStrategy[Any]:
    """Draw a key with the weight it maps to (Hypothesis shrinks towards the first)."""
    return st.sampled_from([choice for choice, weight in choices.items() for _ in range(weight)])


# The weights keep the commonest defects of the old scheduler (a hang on a raising
# predicate, SystemExit uncounted) from hiding the rarer ones in most examples.
STEP_WEIGHTS = dict.fromkeys(STEP_KINDS, 1) | {"return": 5, "raise": 5}
PREDICATE_WEIGHTS = dict.fromkeys(PREDICATES, 1) | {"none": 6}
OP_WEIGHTS = dict.fromkeys(OP_KINDS, 1) | {
    "handle_cancel": 3,
    "runner_cancel": 2,
    "cancel_on_return": 2,
}
METHOD_WEIGHTS = dict.fromkeys(FAULTY_METHODS, 1) | {
    "*": 2,
    "claim": 3,
    "heartbeat": 4,
    "record_progress": 2,
    "settle": 2,
}
ACTION_WEIGHTS = dict.fromkeys(FAULT_ACTIONS, 2) | {"stall_shielded": 3, "interrupt": 1}


def steps() -> st.SearchStrategy[Step]:
    return st.builds(
        Step,
        kind=weighted(STEP_WEIGHTS),
        seconds=weighted({1.0: 2, 0.0: 1, 3.0: 1, 12.0: 2}),
        error=st.sampled_from(list(ERRORS)),
        wrap=st.sampled_from(WRAPS),
        progress=st.sampled_from(["none", "end", "start", "both"]),
    )


def job_plans() -> st.SearchStrategy[JobPlan]:
    return st.builds(
        JobPlan,
        steps=st.lists(steps(), max_size=3).map(tuple),
        max_attempts=st.integers(1, 4),
        timeout=st.sampled_from([10.0, 2.0, 5.0]),
        base_delay=st.sampled_from([1.0, 0.0, 4.0]),
        predicate=weighted(PREDICATE_WEIGHTS),
        delay=st.sampled_from([0.0, 0.0, 0.0, 2.0]),
    )


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    jobs = draw(st.lists(job_plans(), min_size=1, max_size=6).map(tuple))
    times = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0])
    ops = draw(
        st.lists(
            st.builds(
                Op,
                at=times,
                kind=weighted(OP_WEIGHTS),
                job=st.integers(0, len(jobs) - 1),
            ),
            max_size=4,
        ).map(tuple)
    )
    callbacks = draw(
        st.lists(
            st.builds(
                CallbackPlan,
                event=st.sampled_from(EVENTS),
                nth=st.integers(1, 4),
                exits=weighted({False: 3, True: 1}),
            ),
            max_size=2,
        ).map(tuple)
    )
    faults = draw(
        st.lists(
            st.builds(
                FaultPlan,
                method=weighted(METHOD_WEIGHTS),
                action=weighted(ACTION_WEIGHTS),
                trigger=st.sampled_from(["nth", "probability", "window"]),
                n=st.integers(1, 8),
                probability=st.sampled_from([0.3, 0.1, 0.5]),
                seconds=st.sampled_from([5.0, 1.0, 20.0]),
                window=st.tuples(times, st.sampled_from([5.0, 2.0, 20.0])),
                error=st.integers(0, len(STORE_ERRORS) - 1),
            ),
            max_size=3,
        ).map(tuple)
    )
    return Plan(
        concurrency=draw(st.integers(1, 4)),
        poll=draw(st.sampled_from([1.0, 0.5, 2.0])),
        lease=draw(weighted({10.0: 1, 3.0: 3, 30.0: 1})),
        jobs=jobs,
        ops=ops,
        callbacks=callbacks,
        faults=faults,
        rescuer=draw(weighted({False: 1, True: 2})),
        ending=draw(st.sampled_from(["drain", "stop", "stop_now"])),
        seed=draw(st.integers(0, 2**16)),
    )


@attrs.define
class Attempt:
    """One handler call, as the handler saw it."""

    job_id: str
    number: int
    #: "running", "returned", "raised", "exit", "interrupt" or "cancelled".
    outcome: str = "running"
    error: BaseException | None = None
    #: When it returned, on the run's sequence of observations.
    returned_at: int | None = None


@attrs.define
class Run:
    """What one example observed."""

    plan: Plan
    live: dict[str, int] = attrs.Factory(dict)
    running: int = 0
    most_running: int = 0
    attempts: list[Attempt] = attrs.Factory(list)
    #: Problems seen while running (asserting in a handler would just fail the job).
    overlaps: list[str] = attrs.Factory(list)
    started_after_stop: list[str] = attrs.Factory(list)
    #: KeyboardInterrupt/SystemExit raised by handlers, callbacks and predicates.
    injected: list[BaseException] = attrs.Factory(list)
    stop_called: bool = False
    started_callback_raised: bool = False
    stop_returned: bool = False
    #: Sequence numbers: of observations, and of the cancel calls per job id.
    seq: int = 0
    cancel_calls: dict[str, list[int]] = attrs.Factory(dict)
    #: Jobs (by index) to cancel the moment their handler returns.
    cancel_on_return: set[int] = attrs.Factory(set)
    #: What happened that may explain a failure (shown when the run hangs).
    notes: list[str] = attrs.Factory(list)
    #: The store calls (FaultyStorage.calls), for the same purpose.
    store_calls: list[Call] = attrs.Factory(list)
    #: What the runner's block raised, and what escaped the whole run (TooSlowError).
    block_error: BaseException | None = None
    escaped: BaseException | None = None

    def explain(self) -> list[str]:
        faults = [f"{c.method}: {c.faults} -> {c.outcome}" for c in self.store_calls if c.faults]
        return self.notes + faults

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def enter(self, job_id: str, number: int) -> Attempt:
        if self.live.get(job_id, 0):
            self.overlaps.append(f"job {job_id} attempt {number} while another ran")
        if self.stop_returned:
            self.started_after_stop.append(f"job {job_id} attempt {number}")
        self.live[job_id] = self.live.get(job_id, 0) + 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        attempt = Attempt(job_id, number)
        self.attempts.append(attempt)
        return attempt

    def leave(self, job_id: str) -> None:
        self.live[job_id] -= 1
        self.running -= 1

    def inject(self, error: BaseException) -> BaseException:
        self.injected.append(error)
        return error


def make_error(step: Step) -> Exception:
    leaf = ERRORS[step.error]()
    if step.wrap == "group":
        return ExceptionGroup("in the handler's nursery", [leaf])
    if step.wrap == "nested":
        return ExceptionGroup("outer", [ExceptionGroup("inner", [leaf])])
    if step.wrap == "pair":
        return ExceptionGroup("two failures", [leaf, RuntimeError("boom")])
    return leaf


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def expected_retryable(error: BaseException, predicate: str) -> bool | None:
    """How API.md says the runner must judge ``error``; None when it does not say."""
    found = leaves(error)
    judge = PREDICATES[predicate]
    if len(found) > 1:
        return None if judge else all(is_retryable_error(leaf) for leaf in found)
    leaf = found[0]
    if judge is None:
        return is_retryable_error(leaf)
    try:
        return bool(judge(leaf))
    except Exception:
        return is_retryable_error(leaf)  # "the error heuristics decide instead"
    except BaseException:
        return None  # SystemExit: the runner ends


def add_faults(plan: Plan, faulty: FaultyStorage, unit: float) -> list[tuple[float, float, Switch]]:
    """Install the plan's rules; return the windows of the switched ones."""
    windows = []
    for fault in plan.faults:
        trigger: dict[str, Any] = {}
        if fault.trigger == "nth":
            trigger["nth"] = fault.n
        elif fault.trigger == "probability":
            trigger.update(probability=fault.probability, times=fault.n)
        else:
            switch = Switch()
            trigger["switch"] = switch
            start, length = fault.window
            windows.append((start, start + length, switch))
        make = STORE_ERRORS[fault.error]
        # "*": the whole store misbehaves (an outage), for every call the engine makes.
        methods = FAULTY_METHODS if fault.method == "*" else fault.method
        action = fault.action
        if action in ("raise", "raise_after"):
            faulty.fail(methods, make, after=action == "raise_after", **trigger)
        elif action == "interrupt":
            faulty.fail(methods, KeyboardInterrupt, **(trigger | {"times": 1}))
        elif action in ("stall", "stall_shielded"):
            shielded = action == "stall_shielded"
            faulty.stall(methods, fault.seconds * unit, shielded=shielded, **trigger)
        else:
            faulty.cancel(methods, after=action == "cancel_after", **trigger)
    return windows


async def run_plan(run: Run, store: str, folder: Path) -> None:
    """Play ``run.plan`` on a fresh store, then check every promise."""
    plan = run.plan
    memory = store == "memory"
    unit = 1.0 if memory else 0.02
    inner: MemoryStorage | SQLiteStorage
    if memory:
        inner = MemoryStorage(lease_duration=plan.lease * unit)
    else:
        inner = SQLiteStorage(folder / "jobs.db", lease_duration=2.0)
    faulty = FaultyStorage(inner, rng=random.Random(plan.seed))
    run.store_calls = faulty.calls
    windows = add_faults(plan, faulty, unit)
    runner = JobRunner(
        concurrency=plan.concurrency,
        poll_interval=plan.poll * unit,
        storage=faulty,
        logger=QUIET,
    )
    handles: list[JobHandle[Any]] = []

    async def handler(job: Job[Any], ctx: JobContext[Any]) -> str:
        index = job.payload
        job_plan = plan.jobs[index]
        step = job_plan.steps[ctx.attempt - 1] if ctx.attempt <= len(job_plan.steps) else Step()
        attempt = run.enter(job.id, ctx.attempt)
        try:
            if step.progress in ("start", "both"):
                ctx.report_progress(10.0)
            await trio.sleep(step.seconds * unit)
            if step.progress in ("end", "both"):
                ctx.report_progress(90.0, "almost")
            if step.kind == "raise":
                attempt.error = make_error(step)
                attempt.outcome = "raised"
                raise attempt.error
            if step.kind == "hang":
                await trio.sleep(job_plan.timeout * unit * 3)
            elif step.kind in ("exit", "interrupt"):
                attempt.outcome = step.kind
                run.notes.append(f"a handler raised {step.kind}")
                error = SystemExit(f"job {index}") if step.kind == "exit" else KeyboardInterrupt()
                raise run.inject(error)
            elif step.kind == "cancel_self":
                ctx.cancel_scope.cancel()
                await trio.lowlevel.checkpoint()
            elif step.kind in ("stop", "stop_now"):
                run.stop_called = True
                run.notes.append(f"a handler called stop(graceful={step.kind == 'stop'})")
                await runner.stop(graceful=step.kind == "stop")
                run.stop_returned = True
            attempt.outcome = "returned"
            attempt.returned_at = run.tick()
            if index in run.cancel_on_return:
                helpers.start_soon(cancel_on_return, handles[index])
            return f"result {index}"
        except trio.Cancelled:
            attempt.outcome = "cancelled"
            raise
        finally:
            run.leave(job.id)

    def callback(plan_: CallbackPlan) -> Callable[..., None]:
        calls = 0

        def call(*args: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == plan_.nth:
                run.notes.append(f"{plan_.event} callback raised (exits={plan_.exits})")
                run.started_callback_raised |= plan_.event == "job:started"
                if plan_.exits:
                    raise run.inject(SystemExit(f"callback on {plan_.event}"))
                raise RuntimeError(f"a bug in the callback on {plan_.event}")

        return call

    runner.register_handler("job", handler)
    for callback_plan in plan.callbacks:
        runner.on(callback_plan.event, callback(callback_plan))

    def judge(name: str) -> Callable[[BaseException], bool] | None:
        predicate = PREDICATES[name]
        if predicate is None:
            return None

        def noted(error: BaseException) -> bool:
            try:
                return predicate(error)
            except BaseException as exc:
                run.notes.append(f"is_retryable raised {exc!r}")
                if not isinstance(exc, Exception):
                    run.inject(exc)
                raise

        return noted

    async def rescue_meanwhile() -> None:
        while True:  # another worker's rescue, on its own connection: no faults
            await trio.sleep(max(plan.lease * unit / 2, 0.5 * unit))
            await inner.rescue_expired()

    async def play(outer: trio.CancelScope) -> None:
        for index, job_plan in enumerate(plan.jobs):
            if run.stop_called:
                break  # a handler stopped the runner: submit would raise RunnerClosedError
            handles.append(
                await runner.submit(
                    "job",
                    index,
                    timeout=job_plan.timeout * unit,
                    delay=job_plan.delay * unit,
                    retry=RetryConfig(
                        max_attempts=job_plan.max_attempts,
                        base_delay=job_plan.base_delay * unit,
                        strategy=RetryStrategy.FIXED,
                        jitter=False,
                        is_retryable=judge(job_plan.predicate),
                    ),
                )
            )
        timeline: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        for op in plan.ops:
            timeline.append((op.at, functools.partial(operate, op, outer)))
        for start, end, switch in windows:
            timeline.append((start, functools.partial(turn, switch, True)))
            timeline.append((end, functools.partial(turn, switch, False)))
        begin = trio.current_time()
        try:
            for at, action in sorted(timeline, key=lambda item: item[0]):
                await trio.sleep_until(begin + at * unit)
                await action()
        finally:
            for _, _, switch in windows:
                switch.on = False
        if plan.ending != "drain":
            run.stop_called = True
            await runner.stop(graceful=plan.ending == "stop")
            run.stop_returned = True

    async def turn(switch: Switch, on: bool) -> None:
        switch.on = on
        await trio.lowlevel.checkpoint()

    async def cancel(handle: JobHandle[Any], *, by_id: bool = False) -> None:
        run.cancel_calls.setdefault(handle.id, []).append(run.tick())
        if by_id:
            await runner.cancel(handle.id)
        else:
            await handle.cancel()

    async def cancel_on_return(handle: JobHandle[Any]) -> None:
        try:
            await cancel(handle)
        except Exception as exc:  # racing the runner's exit; not what this checks
            run.notes.append(f"cancel on return raised {exc!r}")

    async def operate(op: Op, outer: trio.CancelScope) -> None:
        if op.job >= len(handles):
            return
        handle = handles[op.job]
        if op.kind in ("handle_cancel", "runner_cancel"):
            await cancel(handle, by_id=op.kind == "runner_cancel")
        elif op.kind == "cancel_on_return":
            run.cancel_on_return.add(op.job)
            await trio.lowlevel.checkpoint()
        elif op.kind in ("stop", "stop_now"):
            run.stop_called = True
            await runner.stop(graceful=op.kind == "stop")
            run.stop_returned = True
        else:
            run.notes.append("the block was cancelled")
            outer.cancel()  # the user's code around the block is cancelled
            await trio.lowlevel.checkpoint()

    bound = 3000.0 if memory else 20.0
    helpers: trio.Nursery
    try:
        with trio.fail_after(bound):
            with trio.CancelScope() as outer:
                faulty.cancel_target = outer
                async with trio.open_nursery() as helpers:
                    if plan.rescuer:
                        helpers.start_soon(rescue_meanwhile)
                    try:
                        async with runner:
                            await play(outer)
                    except BaseException as exc:
                        run.block_error = exc
                        raise
                    finally:
                        helpers.cancel_scope.cancel()
    except BaseException as exc:
        run.escaped = exc
    faulty.enabled = False
    faulty.clear()
    await check_run(run, faulty, inner, handles, store, folder)


async def check_run(
    run: Run,
    faulty: FaultyStorage,
    inner: MemoryStorage | SQLiteStorage,
    handles: list[JobHandle[Any]],
    store: str,
    folder: Path,
) -> None:
    plan = run.plan
    # Leaving the block is bounded.
    assert not isinstance(run.escaped, trio.TooSlowError), "the block did not exit in time"
    # What escapes the block is what a handler, callback, predicate or the store
    # raised, unchanged (a lone one not wrapped in a group). A store error may end
    # the block ("whatever raises ... the block exits"); a callback's or predicate's
    # Exception may not (they are logged).
    injected = [*run.injected, *faulty.raised]
    error = run.block_error
    if error is not None:
        unknown = [
            leaf
            for leaf in leaves(error)
            if not isinstance(leaf, trio.Cancelled) and not any(leaf is x for x in injected)
        ]
        assert not unknown, f"the block raised {error!r}"
        # (A Cancelled in a group is Trio's business: the scope that owns it sorts it out.)
        own = [leaf for leaf in leaves(error) if not isinstance(leaf, trio.Cancelled)]
        lone = len(own) == 1 and len(leaves(error)) == 1
        assert not (lone and isinstance(error, BaseExceptionGroup)), f"wrapped: {error!r}"
    # KeyboardInterrupt/SystemExit from a handler, callback or predicate is not swallowed.
    raised_base = any(not isinstance(e, Exception) for e in run.injected)
    assert not raised_base or error is not None, "a SystemExit/KeyboardInterrupt was swallowed"
    # One live attempt per job; at most `concurrency` handlers at once.
    assert not run.overlaps, run.overlaps
    assert run.most_running <= plan.concurrency, run.most_running
    # Stop is final: no handler starts after stop() returned.
    assert not run.started_after_stop, run.started_after_stop

    if store == "memory":
        reader: MemoryStorage | SQLiteStorage = inner
    else:
        reader = SQLiteStorage(folder / "jobs.db", lease_duration=2.0)
    await reader.open()
    try:
        jobs = {job.id: job for job in await reader.list_jobs()}
        faults_fired = {call.method for call in faulty.calls if call.faults}
        lease_safe = not (faults_fired & LEASE_METHODS)
        claims_lost = any(
            call.faults and call.applied and call.outcome != "ok"
            for call in faulty.calls_to("claim")
        )
        clean = error is None and run.escaped is None and not run.stop_called
        for handle in handles:
            job = jobs[handle.id]
            mine = [a for a in run.attempts if a.job_id == job.id]
            assert job.attempts <= job.max_attempts, job
            if job.status in (JobStatus.PENDING, JobStatus.RETRYING):
                assert job.attempts < job.max_attempts, job
            # Leaving the block normally drains.
            assert not clean or job.status.is_final, f"left {job.status} after draining: {job}"
            # A job is RUNNING after the block only when the store failed at its claim,
            # its settle, or its lease (the runner may then leave it to a rescue).
            if job.status is JobStatus.RUNNING:
                assert faults_fired & (LEASE_METHODS | {"claim"}), f"left RUNNING: {job}"
            # Attempts counted by the store were started (unless a claim's answer was lost,
            # or a job:started callback raised, which it does before the handler starts,
            # or a fault on the lease's calls let a claim's lease run out before the
            # runner could give the job back: then the store's rescue counts the
            # attempt, as for a worker that died).
            if not claims_lost and not run.started_callback_raised and lease_safe:
                assert job.attempts <= len({a.number for a in mine}), (job, mine)
            # A handler's SystemExit/KeyboardInterrupt counts its attempt.
            for attempt in mine:
                if attempt.outcome in ("exit", "interrupt"):
                    assert job.attempts >= attempt.number, (job, attempt)
            # A non-retryable error ends the job: no next attempt.
            if lease_safe:
                predicate = plan.jobs[job.payload].predicate
                numbers = {a.number for a in mine}
                for attempt in mine:
                    if attempt.outcome == "raised" and attempt.error is not None:
                        verdict = expected_retryable(attempt.error, predicate)
                        if verdict is False:
                            assert attempt.number + 1 not in numbers, (job, attempt.error)
            # A result is never thrown away: a cancel after the handler returned changes nothing.
            if lease_safe and job.status is JobStatus.CANCELLED:
                last = [a for a in mine if a.number == job.attempts]
                if last and last[-1].returned_at is not None:
                    cancels = run.cancel_calls.get(job.id, [])
                    assert not all(c > last[-1].returned_at for c in cancels), job
            # No handle.wait() waits forever, and it agrees with the store.
            with trio.fail_after(60 * (1 if store == "memory" else 0.5)):
                try:
                    value = await handle.wait()
                except JobFailedError:
                    assert job.status is JobStatus.FAILED, job
                except JobTimeoutError:
                    assert job.status is JobStatus.TIMEOUT, job
                except JobCancelledError:
                    assert job.status is JobStatus.CANCELLED, job
                except RunnerStoppedError:
                    assert not job.status.is_final, job
                else:
                    assert job.status is JobStatus.COMPLETED, job
                    assert value == f"result {job.payload}", value
        # A RUNNING job's lease lapses: rescue recovers it once lease_duration passed.
        if any(job.status is JobStatus.RUNNING for job in jobs.values()):
            await trio.sleep(reader.lease_duration + 0.1)
            await reader.rescue_expired()
            left = [j for j in await reader.list_jobs() if j.status is JobStatus.RUNNING]
            assert not left, left
    finally:
        await reader.close()


EXAMPLES = int(os.environ.get("TRIO_JOBS_FAULT_EXAMPLES", "0"))


def play_example(plan: Plan, store: str) -> Run:
    """Play ``plan`` in ``run_trio``; return what it observed, or raise what it found."""
    run = Run(plan)
    folder = Path(tempfile.mkdtemp(prefix="trio-jobs-faults-"))
    try:
        if store == "memory":
            clock: trio.testing.MockClock | None = virtual()
            hang_after = 4000.0
        else:
            clock, hang_after = None, 25.0
        try:
            run_trio(
                lambda: run_plan(run, store, folder), clock=clock, hang_after=hang_after
            ).unwrap()
        except Hung as hung:
            raise Hung(f"{hung}; what happened: {run.explain()}") from None
        return run
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: On d3a16c1, the scheduler before the redesign, the randomized tests found
#: defects 1, 2, 4, 6, 8, 9 and 10 of issue 11 within 1,600 examples.
RANDOMIZED = pytest.mark.slow


def fault_settings(default_examples: int, *, share: float = 1.0) -> settings:
    """A modest, deterministic run for CI; ``TRIO_JOBS_FAULT_EXAMPLES=2000`` for a hunt.

    ``share``: the part of ``TRIO_JOBS_FAULT_EXAMPLES`` this test takes (SQLite
    examples run on real time and cost a hundred times more).
    """
    return settings(
        max_examples=max(default_examples, int(EXAMPLES * share)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@RANDOMIZED
@fault_settings(200)
@given(plan=plans())
def test_the_promises_hold_under_random_faults_in_memory(plan: Plan) -> None:
    play_example(plan, "memory")


@RANDOMIZED
@fault_settings(25, share=1 / 8)
@given(plan=plans())
def test_the_promises_hold_under_random_faults_on_sqlite(plan: Plan) -> None:
    play_example(plan, "sqlite")
