"""Flow control in the in-memory store: the limits a claim obeys, and their settings.

:class:`MemoryFlowControl` is a base class of :class:`~trio_jobs.storage.MemoryStorage`
(see ``_memory``), which owns the state it works on. Types with active limits keep
their ready jobs in a heap per tenant instead of their channel; a claim looks at
each tenant's head and asks a :class:`~trio_jobs._flow.TypeBudget` which may start.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Collection
from typing import TYPE_CHECKING

import trio
from attrs import evolve

from .._flow import JobTypeLimits, TypeBudget, rate_wait

#: A tenant's ready jobs of a limited type: (-priority, seq, job_id).
TenantHeap = list[tuple[int, int, str]]


class MemoryFlowControl:
    """The flow-control half of :class:`~trio_jobs.storage.MemoryStorage`.

    A mixin: the attributes below are created by ``MemoryStorage.__init__``, and
    running counts are kept by its ``_put``.
    """

    #: The ready jobs' sequence numbers, by job id (an entry is live while it matches).
    _queued: dict[str, int]
    #: The active limits, by job type.
    _limits: dict[str, JobTypeLimits]
    #: The ready jobs of each limited type: a heap per tenant.
    _heads: dict[str, dict[str, TenantHeap]]
    _running: Counter[str]
    _running_tenant: Counter[tuple[str, str]]
    #: The recent starts of each rate-limited type (Trio clock).
    _starts: dict[str, deque[float]]
    #: Each fair type's tenants' turns (see TypeBudget).
    _passes: dict[str, dict[str, tuple[float, float]]]
    _weights: dict[str, float]

    if TYPE_CHECKING:

        def _route(self, job_type: str) -> None:
            """Move the type's ready jobs to per-tenant heaps or back (``MemoryStorage``)."""

    # -- the claim's side ------------------------------------------------

    def _budgets(self, job_types: Collection[str] | None) -> dict[str, TypeBudget]:
        """A :class:`TypeBudget` per limited type among ``job_types`` with ready jobs."""
        now = trio.current_time()
        budgets: dict[str, TypeBudget] = {}
        for job_type, heads in self._heads.items():
            if job_types is not None and job_type not in job_types:
                continue
            ready = [
                tenant
                for tenant, heap in list(heads.items())
                if self._live_head(heads, tenant, heap)
            ]
            if not ready:
                continue
            budgets[job_type] = TypeBudget(
                self._limits[job_type],
                running=self._running[job_type],
                running_by_tenant={t: self._running_tenant[job_type, t] for t in ready},
                starts=self._window(job_type, now),
                now=now,
                passes=self._passes.setdefault(job_type, {}),
                weights=self._weights,
                ready_tenants=ready,
            )
        return budgets

    def _live_head(
        self,
        heads: dict[str, list[tuple[int, int, str]]],
        tenant: str,
        heap: list[tuple[int, int, str]],
    ) -> bool:
        """Drop the tenant's dead entries (cancelled, re-queued); whether one is left."""
        queued = self._queued
        while heap and queued.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if not heap:
            del heads[tenant]
            return False
        return True

    def _window(self, job_type: str, now: float) -> deque[float]:
        """The type's starts within its rate window (older ones dropped)."""
        starts = self._starts.setdefault(job_type, deque())
        rate = self._limits[job_type].rate
        if rate is None:
            starts.clear()
        else:
            cutoff = now - rate[1]
            while starts and starts[0] <= cutoff:
                starts.popleft()
        return starts

    def _flow_pick(
        self, budgets: dict[str, TypeBudget]
    ) -> tuple[tuple[int, int], str, str, str] | None:
        """The best ready job of the limited types that their limits let start."""
        best: tuple[tuple[int, int], str, str, str] | None = None
        for job_type, budget in budgets.items():
            heads = self._heads[job_type]
            pick = budget.pick(
                ((heap[0][0], heap[0][1]), tenant, heap[0][2])
                for tenant, heap in heads.items()
                if heap
            )
            if pick is not None and (best is None or pick[0] < best[0]):
                best = (pick[0], pick[1], pick[2], job_type)
        return best

    def _start_flow(self, budget: TypeBudget, tenant: str) -> None:
        budget.take(tenant)
        if budget.limits.rate is not None:
            self._starts[budget.limits.job_type].append(trio.current_time())

    def _flow_deadline(self) -> float:
        """When a rate window next lets a ready job of a limited type start."""
        deadline = math.inf
        for job_type, heads in self._heads.items():
            rate = self._limits[job_type].rate
            starts = self._starts.get(job_type)
            if rate is not None and heads and starts and len(starts) >= rate[0]:
                deadline = min(deadline, starts[len(starts) - rate[0]] + rate[1])
        return deadline

    # -- the settings (FlowControl) -------------------------------------

    async def set_limits(self, limits: JobTypeLimits) -> None:
        """Store the type's limits (its paused flag stays as it is)."""
        await trio.lowlevel.checkpoint()
        old = self._limits.get(limits.job_type)
        self._store_limits(evolve(limits, paused=old is not None and old.paused))

    def _store_limits(self, limits: JobTypeLimits) -> None:
        if limits.active:
            self._limits[limits.job_type] = limits
        else:
            self._limits.pop(limits.job_type, None)
        self._route(limits.job_type)

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the type's settings (defaults when none are stored)."""
        await trio.lowlevel.checkpoint()
        return self._limits.get(job_type) or JobTypeLimits(job_type)

    async def all_limits(self) -> list[JobTypeLimits]:
        """Return the settings of every type that has any, by type."""
        await trio.lowlevel.checkpoint()
        return [self._limits[t] for t in sorted(self._limits)]

    async def set_paused(self, job_type: str, paused: bool) -> None:
        """Pause or resume claims of ``job_type``."""
        await trio.lowlevel.checkpoint()
        old = self._limits.get(job_type) or JobTypeLimits(job_type)
        self._store_limits(evolve(old, paused=paused))

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Store a tenant's weight in fair turns."""
        await trio.lowlevel.checkpoint()
        self._weights[tenant_id] = weight

    async def flow_usage(self, job_type: str) -> tuple[int, int, dict[str, int]]:
        """``(running, starts in the rate window, running per tenant)`` of the type."""
        await trio.lowlevel.checkpoint()
        recent = len(self._window(job_type, trio.current_time())) if job_type in self._limits else 0
        tenants = {t: n for (jt, t), n in self._running_tenant.items() if jt == job_type and n}
        return self._running[job_type], recent, tenants

    async def next_start_in(self, job_type: str) -> float | None:
        """Seconds until the type's rate window lets one more start (None: no rate)."""
        await trio.lowlevel.checkpoint()
        limits = self._limits.get(job_type)
        if limits is None or limits.rate is None:
            return None
        now = trio.current_time()
        return rate_wait(self._window(job_type, now), limits.rate, now)
