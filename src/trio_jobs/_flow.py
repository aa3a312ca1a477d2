"""Flow control: the per-type limits record, its checks, and the rules of a claim.

Every store obeys the same rules, and they are written once, here:

- :class:`JobTypeLimits` is what ``set_limits``/``pause`` store for a job type;
- :class:`TypeBudget` is one job type's accounting *during one claim*: how many
  attempts may still start (``max_running``, ``rate``), which tenants are at their
  cap, and, with ``fair_tenants``, the order in which tenants take turns.

The stores feed a :class:`TypeBudget` what they counted from their own rows
(running attempts of the type, per tenant), the starts in the rate window, the
tenants' turn counters and weights, and ask it which ready job goes next. The
in-memory store and the SQLite store run it inside the claim itself; the
PostgreSQL store runs it inside the claim's transaction, with the type's limits
row locked.

Fair turns are *stride scheduling*: each tenant of a type has a ``pass``; the
ready tenant with the lowest pass goes next, and its pass grows by ``1 / weight``.
Ties go to the tenant served least recently (one never served first), then to
the older head job. A tenant that had nothing ready and comes back
starts at the lowest pass among the ready tenants, never below: an idle tenant
banks no credit, and its share goes to the others meanwhile (work-conserving).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: The tenant of jobs submitted without a ``tenant_id``, in the turn tables.
NO_TENANT = ""


@attrs.frozen
class JobTypeLimits:
    """The flow-control settings of one job type, as ``get_limits`` returns them.

    Stored in the job store and obeyed by every runner on it when it claims.

    Attributes:
        job_type: The job type these settings are for.
        max_running: At most this many attempts of the type run at once, across
            all runners (None: no limit).
        max_running_per_tenant: At most this many attempts of the type run at once
            for one ``tenant_id`` (None: no limit). Jobs without a tenant count as
            one tenant.
        rate: ``(starts, seconds)``: at most ``starts`` attempts of the type start
            in any window of ``seconds`` (None: no limit).
        fair_tenants: Whether tenants take turns in proportion to their weights
            (see :meth:`JobRunner.set_tenant_weight`) instead of FIFO across tenants.
        paused: Whether the type is paused (no runner claims it until resumed).
    """

    job_type: str
    max_running: int | None = None
    max_running_per_tenant: int | None = None
    rate: tuple[int, float] | None = None
    fair_tenants: bool = False
    paused: bool = False

    @property
    def active(self) -> bool:
        """Whether any setting differs from the default (the claim must look)."""
        return bool(
            self.paused
            or self.fair_tenants
            or self.max_running is not None
            or self.max_running_per_tenant is not None
            or self.rate is not None
        )


def check_job_type(job_type: object) -> str:
    """Return ``job_type`` if it is a non-empty string.

    Raises:
        TypeError: not a string.
        ValueError: empty.
    """
    if not isinstance(job_type, str):
        raise TypeError(f"job_type must be a str, got {job_type!r}")
    if not job_type:
        raise ValueError("job_type must not be empty")
    return job_type


def check_count(name: str, value: object, *, allow_none: bool = True) -> int | None:
    """Return ``value`` if it is an int >= 1 (or None when allowed).

    Raises:
        TypeError: not an int (bool is refused).
        ValueError: less than 1.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def check_rate(rate: object) -> tuple[int, float] | None:
    """Return ``rate`` as ``(starts, seconds)``, or None.

    Raises:
        TypeError: not a pair of an int and a number.
        ValueError: ``starts`` < 1, or ``seconds`` not positive and finite.
    """
    if rate is None:
        return None
    if not isinstance(rate, tuple | list) or len(rate) != 2:
        raise TypeError(f"rate must be a (starts, seconds) pair, got {rate!r}")
    starts, seconds = rate
    check_count("rate[0] (starts)", starts, allow_none=False)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"rate[1] (seconds) must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"rate[1] (seconds) must be > 0 and finite, got {seconds!r}")
    return (int(starts), float(seconds))


def check_weight(tenant_id: object, weight: object) -> tuple[str, float]:
    """Return ``(tenant_id, weight)`` checked.

    Raises:
        TypeError: ``tenant_id`` not a str, or ``weight`` not a number.
        ValueError: ``weight`` not positive and finite.
    """
    if not isinstance(tenant_id, str):
        raise TypeError(f"tenant_id must be a str, got {tenant_id!r}")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise TypeError(f"weight must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight must be > 0 and finite, got {weight!r}")
    return tenant_id, float(weight)


def make_limits(
    job_type: object,
    *,
    max_running: object = None,
    max_running_per_tenant: object = None,
    rate: object = None,
    fair_tenants: object = False,
    paused: bool = False,
) -> JobTypeLimits:
    """Check ``set_limits`` arguments and build the record (nothing stored yet).

    Raises:
        TypeError: an argument has the wrong type (the message names it).
        ValueError: an argument is out of range (the message names it).
    """
    if not isinstance(fair_tenants, bool):
        raise TypeError(f"fair_tenants must be a bool, got {fair_tenants!r}")
    return JobTypeLimits(
        job_type=check_job_type(job_type),
        max_running=check_count("max_running", max_running),
        max_running_per_tenant=check_count("max_running_per_tenant", max_running_per_tenant),
        rate=check_rate(rate),
        fair_tenants=fair_tenants,
        paused=paused,
    )


def tenant_key(tenant_id: str | None) -> str:
    """The key of a job's tenant in the turn and count tables."""
    return NO_TENANT if tenant_id is None else tenant_id


class TypeBudget:
    """One job type's flow accounting during one claim (see the module docs).

    Args:
        limits: The type's stored settings.
        running: Attempts of the type running now (counted from the jobs).
        running_by_tenant: The same, per tenant key (:func:`tenant_key`).
        starts: Start times in the current rate window (any clock, with ``now``).
        now: The claim's time, on the clock of ``starts``.
        passes: The tenants' ``(pass, last served)`` (fair turns); updated in place.
        weights: The tenants' weights (default 1.0).
        ready_tenants: The tenants with a ready job now (fair turns: the floor).
    """

    __slots__ = (
        "_floor",
        "_now",
        "_passes",
        "_per_tenant",
        "_weights",
        "limits",
        "room",
        "running_by_tenant",
        "started",
    )

    def __init__(
        self,
        limits: JobTypeLimits,
        *,
        running: int,
        running_by_tenant: Mapping[str, int],
        starts: Iterable[float] = (),
        now: float = 0.0,
        passes: dict[str, tuple[float, float]] | None = None,
        weights: Mapping[str, float] | None = None,
        ready_tenants: Iterable[str] = (),
    ) -> None:
        self.limits = limits
        room = math.inf
        if limits.paused:
            room = 0
        if limits.max_running is not None:
            room = min(room, limits.max_running - running)
        if limits.rate is not None:
            count, seconds = limits.rate
            recent = sum(1 for at in starts if at > now - seconds)
            room = min(room, count - recent)
        #: How many more attempts of the type may start in this claim.
        self.room: float = max(0, room)
        self.running_by_tenant = dict(running_by_tenant)
        self._per_tenant = limits.max_running_per_tenant
        self._passes = passes if passes is not None else {}
        self._weights = weights or {}
        #: The tenant keys that started in this claim, in order (stores persist passes).
        self.started: list[str] = []
        self._now = now
        known = [self._passes[t][0] for t in ready_tenants if t in self._passes]
        self._floor = min(known) if known else 0.0

    def tenant_open(self, tenant: str) -> bool:
        """Whether ``tenant`` may start one more attempt of the type now."""
        cap = self._per_tenant
        return cap is None or self.running_by_tenant.get(tenant, 0) < cap

    def turn(self, tenant: str) -> tuple[float, float]:
        """The tenant's place in the fair order, lower first (``(0, 0)`` without fairness).

        ``(pass, last served)``, the pass raised to the floor (see the module docs).
        """
        if not self.limits.fair_tenants:
            return (0.0, 0.0)
        known = self._passes.get(tenant)
        if known is None:
            return (self._floor, -math.inf)
        return (max(known[0], self._floor), known[1])

    def pick(self, heads: Iterable[tuple[Any, str, Any]]) -> tuple[Any, str, Any] | None:
        """The head to start next among ``(order, tenant, item)``, or None.

        ``order`` is the store's claim order of the head (smaller first; it starts
        with ``-priority``). A tenant at its cap is skipped, never waited for. With
        fair turns, among heads of the best priority the lowest turn goes first.
        """
        if self.room <= 0:
            return None
        best: tuple[Any, str, Any] | None = None
        best_key: tuple[Any, ...] = ()
        for head in heads:
            order, tenant, _ = head
            if not self.tenant_open(tenant):
                continue
            key = (order[0], self.turn(tenant), order)
            if best is None or key < best_key:
                best, best_key = head, key
        return best

    def take(self, tenant: str) -> None:
        """Account for one attempt of ``tenant`` starting."""
        self.room -= 1
        self.running_by_tenant[tenant] = self.running_by_tenant.get(tenant, 0) + 1
        self.started.append(tenant)
        if self.limits.fair_tenants:
            served = self._now + len(self.started) * 1e-6  # in order within one claim
            self._passes[tenant] = (
                self.turn(tenant)[0] + 1.0 / self._weights.get(tenant, 1.0),
                served,
            )

    def passes_of(self, tenants: Iterable[str]) -> dict[str, tuple[float, float]]:
        """The turn counters of ``tenants`` (after :meth:`take`), to store."""
        return {t: self._passes[t] for t in tenants if t in self._passes}


def held_back_reason(
    limits: JobTypeLimits | None, running: int, recent_starts: int, tenant_running: int | None
) -> str | None:
    """Why a ready job of a type with ``limits`` waits, if a limit holds it back.

    ``recent_starts`` counts the starts in the current rate window, and
    ``tenant_running`` the running attempts of the job's tenant (None: not known).
    Returns ``"paused"``, ``"max_running"``, ``"rate"``, ``"max_running_per_tenant"``,
    or None.
    """
    if limits is None:
        return None
    if limits.paused:
        return "paused"
    if limits.max_running is not None and running >= limits.max_running:
        return "max_running"
    if limits.rate is not None and recent_starts >= limits.rate[0]:
        return "rate"
    cap = limits.max_running_per_tenant
    if cap is not None and tenant_running is not None and tenant_running >= cap:
        return "max_running_per_tenant"
    return None


#: What :attr:`HeldBack.reason` may be, in the order the checks are made.
HELD_BACK_REASONS = ("paused", "max_running", "rate", "max_running_per_tenant")


@attrs.frozen
class HeldBack:
    """Why a ready job (or every ready job of a type) waits: a flow limit holds it back.

    ``str()`` of it is one line for people, e.g. ``paused``,
    ``max_running 3 reached (3 running)``, ``rate 20 per 1 s (next start in 0.4 s)``.

    Attributes:
        job_type: The job type whose limit holds the job back.
        reason: ``"paused"``, ``"max_running"``, ``"rate"`` or
            ``"max_running_per_tenant"``.
        limit: The limit reached (``max_running``, the tenant cap, or the starts
            allowed per rate window); None when paused.
        running: Attempts running now: of the type, or of the tenant for
            ``max_running_per_tenant``; None for ``paused`` and ``rate``.
        window: The rate window in seconds (``rate`` only).
        next_start_in: Seconds until the rate window lets the next attempt start
            (``rate`` only; None when the store cannot tell).
        tenant_id: The tenant at its cap (``max_running_per_tenant`` only; None
            for jobs without a tenant).
    """

    job_type: str
    reason: str
    limit: int | None = None
    running: int | None = None
    window: float | None = None
    next_start_in: float | None = None
    tenant_id: str | None = None

    def __str__(self) -> str:
        if self.reason == "paused":
            return "paused"
        if self.reason == "rate":
            text = f"rate {self.limit} per {self.window:g} s"
            if self.next_start_in is not None:
                text += f" (next start in {self.next_start_in:.1f} s)"
            return text
        whose = ""
        if self.reason == "max_running_per_tenant":
            whose = " for no tenant" if self.tenant_id is None else f" for tenant {self.tenant_id}"
        return f"{self.reason} {self.limit} reached{whose} ({self.running} running)"

    @classmethod
    def of(
        cls,
        limits: JobTypeLimits,
        running: int,
        recent_starts: int,
        tenant_running: int | None = None,
        *,
        tenant_id: str | None = None,
        next_start_in: float | None = None,
    ) -> HeldBack | None:
        """The record for ``held_back_reason()`` of these counts, or None."""
        reason = held_back_reason(limits, running, recent_starts, tenant_running)
        if reason is None:
            return None
        if reason == "paused":
            return cls(limits.job_type, reason)
        if reason == "max_running":
            return cls(limits.job_type, reason, limits.max_running, running)
        if reason == "rate":
            assert limits.rate is not None
            count, window = limits.rate
            return cls(limits.job_type, reason, count, window=window, next_start_in=next_start_in)
        return cls(
            limits.job_type,
            reason,
            limits.max_running_per_tenant,
            tenant_running,
            tenant_id=tenant_id,
        )


def rate_window(
    starts: Iterable[float], rate: tuple[int, float], started: int, now: float
) -> list[float]:
    """The start times a rate window keeps after ``started`` more starts at ``now``.

    Starts older than the window drop out, and at most ``rate[0]`` (the newest)
    are kept: all a later claim needs to count the window.
    """
    count, seconds = rate
    window = [at for at in starts if at > now - seconds] + [now] * started
    return window[-count:]


def rate_wait(starts: Iterable[float], rate: tuple[int, float] | None, now: float) -> float | None:
    """Seconds from ``now`` until the rate window lets one more start (0.0: now).

    ``starts`` are the recorded start times on the clock of ``now``; None without
    a rate.
    """
    if rate is None:
        return None
    count, seconds = rate
    recent = sorted(at for at in starts if at > now - seconds)
    if len(recent) < count:
        return 0.0
    return max(0.0, recent[len(recent) - count] + seconds - now)


def choose(
    limit: int,
    free: Iterable[tuple[Any, Any]],
    limited: Mapping[str, tuple[TypeBudget, Mapping[str, list[tuple[Any, Any]]]]],
) -> list[Any]:
    """Pick up to ``limit`` jobs to claim, in claim order, obeying every budget.

    A durable store's claim reads its candidates and lets this decide:

    Args:
        limit: How many jobs the claim may take.
        free: ``(order, item)`` of ready jobs of types without limits, best first
            (at least ``limit`` of them when there are that many).
        limited: Per limited type, its budget and, per tenant key, that tenant's
            ready ``(order, item)``, best first (as many as the tenant may start).

    Returns:
        The chosen items, in the order they were picked. Each limited type's budget
        has taken its starts (:attr:`TypeBudget.started`).
    """
    chosen: list[Any] = []
    free_iter = iter(free)
    free_head = next(free_iter, None)
    cursors = {job_type: dict.fromkeys(heads, 0) for job_type, (_, heads) in limited.items()}
    while len(chosen) < limit:
        best: tuple[Any, str, Any] | None = None
        best_type = ""
        for job_type, (budget, heads) in limited.items():
            cursor = cursors[job_type]
            pick = budget.pick(
                (heads[tenant][at][0], tenant, heads[tenant][at][1])
                for tenant, at in cursor.items()
                if at < len(heads[tenant])
            )
            if pick is not None and (best is None or pick[0] < best[0]):
                best, best_type = pick, job_type
        if best is not None and (free_head is None or best[0] < free_head[0]):
            _, tenant, item = best
            limited[best_type][0].take(tenant)
            cursors[best_type][tenant] += 1
            chosen.append(item)
        elif free_head is not None:
            chosen.append(free_head[1])
            free_head = next(free_iter, None)
        else:
            break
    return chosen
