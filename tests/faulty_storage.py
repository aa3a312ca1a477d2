"""``FaultyStorage``: a :class:`JobStorage` wrapper that injects faults, for tests.

It forwards every method of the protocol to the store it wraps (and, when the
wrapped store has them, the optional ``wait_and_claim`` and
``wait_for_cancel_request`` the runner looks up with ``getattr``), and can be told
to misbehave at chosen calls:

- :class:`Raise`: the call raises an exception (a transient ``OSError``, an
  ``sqlite3.OperationalError``, anything; even ``KeyboardInterrupt``, which is how
  Ctrl-C reaches Trio code: at a checkpoint, such as a store call), either
  *before* the store applied the call, or *after* (the change is made but the
  answer is lost, as when a connection drops after a commit).
- :class:`Stall`: the call sleeps for a while or until :meth:`FaultyStorage.release`,
  before or after the store applied it. A plain stall is cancellable, like a
  network wait. ``shielded=True`` makes the whole call uninterruptible, like a
  store call running in a worker thread (``trio.to_thread.run_sync``, as
  :class:`SQLiteStorage` does): a cancellation that arrives meanwhile does not
  stop it; the call applies and returns, and the caller sees ``Cancelled`` at its
  next checkpoint.
- :class:`CancelAt`: the call is cancelled. Cancellation in Trio always belongs to
  a scope: a store call raises ``Cancelled`` because some code around it was
  cancelled (the user's ``move_on_after`` around the runner, a nursery whose
  sibling crashed). So the fault cancels a *scope around the call* (the rule's
  ``scope``, else :attr:`FaultyStorage.cancel_target`, typically the scope a test
  wraps around the runner's block) and then checkpoints, so the call raises a
  genuine ``Cancelled`` mid-way: *before* the store applied the call, or *after*
  (the change is made, the caller never sees the answer). If the call runs where
  that cancellation cannot reach (a shielded scope), it completes normally, as it
  would in real life.

A :class:`Rule` fires on the ``nth`` call it sees, with a ``probability`` drawn
from the wrapper's seeded :class:`random.Random`, and/or while its
:class:`Switch` is on (all given conditions must hold; none given: every call),
at most ``times`` times. Several rules may fire at one call; they act in the
order they were added.

The in-process fast paths: the runner checks ``isinstance(storage,
InProcessStorage)`` and, for such a store (:class:`MemoryStorage`), calls the
synchronous ``claim_nowait``, ``save_nowait``, ``settle_nowait`` and ``wake``
instead of the async methods, which would bypass any fault. ``FaultyStorage``
deliberately does **not** offer them (``isinstance(faulty, InProcessStorage)`` is
False even around a ``MemoryStorage``), so every call goes through the async
protocol where faults can be injected. A runner on ``FaultyStorage(MemoryStorage())``
therefore takes the durable stores' path (claim with a poll, async settle), which
is the path whose faults matter; the in-process path has no store I/O to fail.

Every call is recorded in :attr:`FaultyStorage.calls` (method, a summary of the
arguments, what was injected, and the outcome), for assertions.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import trio

from trio_jobs import ErrorInfo, Job, JobStats, JobStatus
from trio_jobs.storage._base import CancelOutcome, Heartbeat, JobStorage

T = TypeVar("T")

#: The optional methods the runner looks up with ``getattr``: forwarded (with
#: faults) only when the wrapped store has them, so the runner sees the same shape.
OPTIONAL_METHODS = frozenset({"wait_and_claim", "wait_for_cancel_request"})

#: Every method a rule may name.
METHODS = frozenset(
    {
        "open",
        "close",
        "save",
        "update",
        "get",
        "get_next_pending",
        "get_by_status",
        "mark_running",
        "delete",
        "get_stats",
        "claim",
        "settle",
        "record_progress",
        "heartbeat",
        "rescue_expired",
        "request_cancel",
        "wait_for_work",
        "wait_for_change",
        "list_jobs",
        "count_unfinished",
        "requeue",
        "purge",
        *OPTIONAL_METHODS,
    }
)


class Switch:
    """A flag that rules can follow: they fire only while it is on."""

    def __init__(self, on: bool = False) -> None:
        self.on = on

    def __repr__(self) -> str:
        return f"Switch(on={self.on})"


@attrs.frozen
class Raise:
    """Make the call raise ``error`` (an instance, or a factory called per fault).

    ``after=True``: the store applies the call first, then the error is raised.
    """

    error: BaseException | Callable[[], BaseException]
    after: bool = False

    def make(self) -> BaseException:
        """Return the exception to raise."""
        return self.error() if callable(self.error) else self.error


@attrs.frozen
class Stall:
    """Make the call wait ``seconds`` (``None``: until :meth:`FaultyStorage.release`).

    ``after=True``: wait after the store applied the call. ``shielded=True``: the
    whole call is uninterruptible, like a call in a worker thread (see the module docs).
    """

    seconds: float | None = None
    after: bool = False
    shielded: bool = False


@attrs.frozen
class CancelAt:
    """Cancel a scope around the call, so that the call raises ``Cancelled``.

    ``scope``: the scope to cancel; ``None`` uses :attr:`FaultyStorage.cancel_target`.
    ``after=True``: the store applies the call first.
    """

    scope: trio.CancelScope | None = None
    after: bool = False


Action = Raise | Stall | CancelAt


@attrs.define(eq=False)
class Rule:
    """When and how to misbehave; see the module docs. ``methods=None``: every method."""

    methods: frozenset[str] | None
    action: Action
    nth: int | None = None
    probability: float | None = None
    switch: Switch | None = None
    times: int | None = None
    #: Calls this rule has seen, and how many times it fired.
    seen: int = 0
    fired: int = 0

    def applies_to(self, method: str) -> bool:
        """Whether this rule watches ``method``."""
        return self.methods is None or method in self.methods

    def fires(self, rng: random.Random) -> bool:
        """Count one call and decide whether to fire at it."""
        self.seen += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None and self.seen != self.nth:
            return False
        if self.switch is not None and not self.switch.on:
            return False
        if self.probability is not None and rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


@attrs.define
class Call:
    """One call to the store, as the wrapper saw it."""

    method: str
    args: str
    #: The faults injected at this call, e.g. ``["raise OSError('x')", "stall 1.0"]``.
    faults: list[str] = attrs.Factory(list)
    #: Whether the wrapped store was called and returned.
    applied: bool = False
    #: ``"running"``, ``"ok"``, ``"cancelled"`` or ``"raised <repr>"``.
    outcome: str = "running"


class FaultyStorage:
    """Wraps ``inner`` and injects faults into its calls; see the module docs.

    Args:
        inner: The store to forward to.
        rng: Decides probabilistic rules; ``random.Random(0)`` by default.
        cancel_target: The scope :class:`CancelAt` rules cancel when they name none.
    """

    def __init__(
        self,
        inner: JobStorage,
        *,
        rng: random.Random | None = None,
        cancel_target: trio.CancelScope | None = None,
    ) -> None:
        self.inner = inner
        self.rng = rng if rng is not None else random.Random(0)
        self.cancel_target = cancel_target
        #: False: forward every call untouched (rules neither fire nor count).
        self.enabled = True
        self.rules: list[Rule] = []
        self.calls: list[Call] = []
        #: Every exception a :class:`Raise` rule raised, in order.
        self.raised: list[BaseException] = []
        self._release = trio.Event()
        self._stalled: dict[str, int] = {}
        self._stall_changed = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r}, rules={len(self.rules)})"

    # -- configuring ---------------------------------------------------------------

    def add(
        self,
        methods: str | Iterable[str] | None,
        action: Action,
        *,
        nth: int | None = None,
        probability: float | None = None,
        switch: Switch | None = None,
        times: int | None = None,
    ) -> Rule:
        """Add a rule for ``methods`` (a name, several, or ``None`` for all); return it.

        Raises:
            ValueError: an unknown method name, ``nth < 1``, or a probability outside 0..1.
        """
        if methods is None:
            names = None
        else:
            names = frozenset([methods] if isinstance(methods, str) else methods)
        if names is not None and not names <= METHODS:
            raise ValueError(f"unknown store methods: {sorted(names - METHODS)}")
        if nth is not None and nth < 1:
            raise ValueError(f"nth must be >= 1, got {nth}")
        if probability is not None and not 0 <= probability <= 1:
            raise ValueError(f"probability must be within 0..1, got {probability}")
        rule = Rule(names, action, nth=nth, probability=probability, switch=switch, times=times)
        self.rules.append(rule)
        return rule

    def fail(
        self,
        methods: str | Iterable[str] | None,
        error: BaseException | Callable[[], BaseException],
        *,
        after: bool = False,
        **trigger: Any,
    ) -> Rule:
        """Make calls raise ``error``; ``trigger``: ``nth``, ``probability``, ``switch``, ``times``.

        ``after=True``: the store applies the call first.
        """
        return self.add(methods, Raise(error, after=after), **trigger)

    def stall(
        self,
        methods: str | Iterable[str] | None,
        seconds: float | None = None,
        *,
        after: bool = False,
        shielded: bool = False,
        **trigger: Any,
    ) -> Rule:
        """Make calls wait ``seconds`` or until :meth:`release`; see :class:`Stall`."""
        return self.add(methods, Stall(seconds, after=after, shielded=shielded), **trigger)

    def cancel(
        self,
        methods: str | Iterable[str] | None,
        *,
        scope: trio.CancelScope | None = None,
        after: bool = False,
        **trigger: Any,
    ) -> Rule:
        """Make calls raise ``Cancelled`` by cancelling a scope around them (:class:`CancelAt`)."""
        return self.add(methods, CancelAt(scope, after=after), **trigger)

    def clear(self) -> None:
        """Remove every rule and release every stalled call."""
        self.rules.clear()
        self.release()

    def release(self) -> None:
        """Let every call stalled "until released" go on."""
        self._release.set()
        self._release = trio.Event()

    def stalled(self, method: str | None = None) -> int:
        """How many calls (of ``method``, or of any) are stalled right now."""
        if method is None:
            return sum(self._stalled.values())
        return self._stalled.get(method, 0)

    async def wait_stalled(self, method: str | None = None, count: int = 1) -> None:
        """Wait until at least ``count`` calls (of ``method``) are stalled."""
        while self.stalled(method) < count:
            await self._stall_changed.park()

    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls to ``method``."""
        return [c for c in self.calls if c.method == method]

    # -- the machinery -------------------------------------------------------------

    async def _call(self, method: str, summary: str, call: Callable[[], Awaitable[T]]) -> T:
        if not self.enabled:
            return await call()
        record = Call(method, summary)
        self.calls.append(record)
        rules = [r for r in self.rules if r.applies_to(method) and r.fires(self.rng)]
        shielded = any(isinstance(r.action, Stall) and r.action.shielded for r in rules)
        try:
            with trio.CancelScope(shield=shielded):
                for rule in rules:
                    if not rule.action.after:
                        await self._act(rule.action, method, record)
                result = await call()
                record.applied = True
                for rule in rules:
                    if rule.action.after:
                        await self._act(rule.action, method, record)
        except trio.Cancelled:
            record.outcome = "cancelled"
            raise
        except BaseException as exc:
            record.outcome = f"raised {exc!r}"
            raise
        record.outcome = "ok"
        return result

    async def _act(self, action: Action, method: str, record: Call) -> None:
        when = " after" if action.after else ""
        if isinstance(action, Raise):
            error = action.make()
            record.faults.append(f"raise {error!r}{when}")
            self.raised.append(error)
            raise error
        if isinstance(action, Stall):
            record.faults.append(f"stall {action.seconds}{when}")
            self._stalled[method] = self._stalled.get(method, 0) + 1
            self._stall_changed.unpark_all()
            try:
                if action.seconds is None:
                    await self._release.wait()
                else:
                    await trio.sleep(action.seconds)
            finally:
                self._stalled[method] -= 1
                self._stall_changed.unpark_all()
            return
        scope = action.scope if action.scope is not None else self.cancel_target
        if scope is None:
            raise RuntimeError("a CancelAt rule needs a scope (or set cancel_target)")
        record.faults.append(f"cancel{when}")
        scope.cancel()
        await trio.lowlevel.checkpoint()

    # -- the protocol ----------------------------------------------------------------

    @property
    def lease_duration(self) -> float:
        """The wrapped store's lease duration."""
        return self.inner.lease_duration

    async def open(self) -> None:
        """Forward ``open``."""
        await self._call("open", "", self.inner.open)

    async def close(self) -> None:
        """Forward ``close``."""
        await self._call("close", "", self.inner.close)

    async def __aenter__(self) -> FaultyStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def save(self, job: Job[Any], *, delay: float = 0.0) -> None:
        """Forward ``save``."""
        await self._call(
            "save", f"{job.id} {job.type} delay={delay}", lambda: self.inner.save(job, delay=delay)
        )

    async def update(self, job: Job[Any]) -> None:
        """Forward ``update``."""
        await self._call("update", f"{job.id} {job.status.value}", lambda: self.inner.update(job))

    async def get(self, job_id: str) -> Job[Any] | None:
        """Forward ``get``."""
        return await self._call("get", job_id, lambda: self.inner.get(job_id))

    async def get_next_pending(self, limit: int) -> list[Job[Any]]:
        """Forward ``get_next_pending``."""
        return await self._call(
            "get_next_pending", f"limit={limit}", lambda: self.inner.get_next_pending(limit)
        )

    async def get_by_status(self, status: JobStatus, limit: int | None = None) -> list[Job[Any]]:
        """Forward ``get_by_status``."""
        return await self._call(
            "get_by_status",
            f"{status.value} limit={limit}",
            lambda: self.inner.get_by_status(status, limit),
        )

    async def mark_running(self, job_id: str) -> bool:
        """Forward ``mark_running``."""
        return await self._call("mark_running", job_id, lambda: self.inner.mark_running(job_id))

    async def delete(self, job_id: str) -> bool:
        """Forward ``delete``."""
        return await self._call("delete", job_id, lambda: self.inner.delete(job_id))

    async def get_stats(self, job_types: Collection[str] | None = None) -> JobStats:
        """Forward ``get_stats``."""
        return await self._call(
            "get_stats", _types(job_types), lambda: self.inner.get_stats(job_types)
        )

    async def claim(
        self, worker_id: str, limit: int, job_types: Collection[str] | None = None
    ) -> list[Job[Any]]:
        """Forward ``claim``."""
        return await self._call(
            "claim",
            f"{worker_id} limit={limit} {_types(job_types)}",
            lambda: self.inner.claim(worker_id, limit, job_types),
        )

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
        """Forward ``settle``."""
        return await self._call(
            "settle",
            f"{job_id} #{attempt} -> {status.value}",
            lambda: self.inner.settle(
                job_id,
                worker_id=worker_id,
                attempt=attempt,
                status=status,
                result=result,
                error=error,
                delay=delay,
                execution_time=execution_time,
            ),
        )

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
        """Forward ``record_progress``."""
        return await self._call(
            "record_progress",
            f"{job_id} #{attempt} progress={progress}",
            lambda: self.inner.record_progress(
                job_id,
                worker_id=worker_id,
                attempt=attempt,
                progress=progress,
                message=message,
                metadata=metadata,
            ),
        )

    async def heartbeat(self, worker_id: str, job_ids: Collection[str]) -> Heartbeat:
        """Forward ``heartbeat``."""
        return await self._call(
            "heartbeat",
            f"{worker_id} {sorted(job_ids)}",
            lambda: self.inner.heartbeat(worker_id, job_ids),
        )

    async def rescue_expired(self) -> list[Job[Any]]:
        """Forward ``rescue_expired``."""
        return await self._call("rescue_expired", "", self.inner.rescue_expired)

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Forward ``request_cancel``."""
        return await self._call("request_cancel", job_id, lambda: self.inner.request_cancel(job_id))

    async def wait_for_work(self, timeout: float) -> None:
        """Forward ``wait_for_work``."""
        await self._call(
            "wait_for_work", f"timeout={timeout}", lambda: self.inner.wait_for_work(timeout)
        )

    async def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Forward ``wait_for_change``."""
        await self._call(
            "wait_for_change",
            f"{job_id} timeout={timeout}",
            lambda: self.inner.wait_for_change(job_id, timeout),
        )

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Forward ``list_jobs``."""
        return await self._call(
            "list_jobs",
            f"status={status} type={job_type} limit={limit}",
            lambda: self.inner.list_jobs(status=status, job_type=job_type, limit=limit),
        )

    async def count_unfinished(self, job_types: Collection[str] | None = None) -> int:
        """Forward ``count_unfinished``."""
        return await self._call(
            "count_unfinished", _types(job_types), lambda: self.inner.count_unfinished(job_types)
        )

    async def requeue(self, job_id: str) -> bool:
        """Forward ``requeue``."""
        return await self._call("requeue", job_id, lambda: self.inner.requeue(job_id))

    async def purge(self, older_than: float) -> int:
        """Forward ``purge``."""
        return await self._call(
            "purge", f"older_than={older_than}", lambda: self.inner.purge(older_than)
        )

    # -- the optional methods, only when the wrapped store has them ----------------

    def __getattr__(self, name: str) -> Any:
        # Only the optional methods: anything else (claim_nowait, wake...) must stay
        # missing, or the runner would take the in-process path around the faults.
        if name not in OPTIONAL_METHODS:
            raise AttributeError(name)
        method = getattr(self.__dict__["inner"], name)  # AttributeError if absent

        async def forward(*args: Any, **kwargs: Any) -> Any:
            return await self._call(name, _summary(args, kwargs), lambda: method(*args, **kwargs))

        forward.__name__ = name
        return forward


def _types(job_types: Collection[str] | None) -> str:
    return "types=*" if job_types is None else f"types={sorted(job_types)}"


def _summary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, Job):
        return value.id
    if isinstance(value, frozenset | set | list | tuple):
        return repr(sorted(map(str, value)))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "METHODS",
    "OPTIONAL_METHODS",
    "Action",
    "Call",
    "CancelAt",
    "FaultyStorage",
    "Raise",
    "Rule",
    "Stall",
    "Switch",
]
