"""Flow control of :class:`PostgresStorage`: the settings, and the claims that obey them.

:class:`FlowMethods` is a base class of ``PostgresStorage`` (see ``_store``). It
implements :class:`~trio_jobs.storage.FlowControl` (limits, pauses, tenant
weights, usage) and keeps the store's cache of which types have flow settings,
which decides whether a claim goes through the limited claim. The statements
themselves are in :mod:`._flow`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..._flow import JobTypeLimits
from ..._records import Job
from . import _flow as pg_flow

if TYPE_CHECKING:
    from ._connect import Connection

T = TypeVar("T")


class FlowMethods:
    """The flow-control half of :class:`PostgresStorage`.

    A mixin: the attributes below are set by ``PostgresStorage.__init__``.
    """

    #: The schema's name, quoted, as statements spell it.
    _quoted: str
    #: Seconds a claim stays valid without a heartbeat.
    _lease: float
    #: The channel that wakes workers waiting for work.
    _work_channel: str
    #: The types with flow settings, as last read (None: read before the next claim).
    _limited: frozenset[str] | None

    if TYPE_CHECKING:

        async def _run(self, fn: Callable[[Connection], T]) -> T:
            """Run ``fn`` on a pooled connection in a worker thread (``PostgresStorage``)."""

    # -- the limited claim --------------------------------------------------------

    async def _refresh_limited(self) -> None:
        try:
            self._limited = await self._run(partial(pg_flow.limited_types, s=self._quoted))
        except Exception:
            self._limited = None  # read before the next claim instead

    async def _wants_limited(self, types: list[str] | None) -> bool:
        """Whether the claim must go through the limited claim (see ``._flow``).

        Which types have flow settings is cached between claims and read again
        after a claim that came back empty. A stale cache is safe: the usual claim
        reads the settings itself and never takes a limited type's job; such a job
        waits at most until the next short claim.
        """
        if self._limited is None:
            await self._refresh_limited()
        limited = self._limited
        return (
            limited is not None
            and bool(limited)
            and (types is None or not limited.isdisjoint(types))
        )

    async def _claim_limited(
        self, worker_id: str, limit: int, types: list[str] | None
    ) -> list[Job[Any]] | None:
        """The limited claim, in one transaction; None when no type has settings now."""
        claim = partial(
            pg_flow.claim_limited,
            s=self._quoted,
            worker_id=worker_id,
            limit=limit,
            types=types,
            lease=self._lease,
        )
        with trio.CancelScope(shield=True):  # claimed jobs must reach us (or go back)
            jobs: list[Job[Any]] | None = await self._run(claim)
        if not jobs:
            await self._refresh_limited()  # (no jobs in hand: cancelling loses nothing)
        return jobs

    # -- flow control (FlowControl) --------------------------------------------

    async def set_limits(self, limits: JobTypeLimits) -> None:
        """Store the type's limits (its paused flag stays as it is); wakes the workers."""
        await self._run(
            partial(pg_flow.store_limits, s=self._quoted, limits=limits, keep_paused=True)
        )
        self._limited = None
        await self._announce_work()

    async def set_paused(self, job_type: str, paused: bool) -> None:
        """Pause or resume claims of ``job_type``; a resume wakes the workers."""
        await self._run(
            partial(pg_flow.set_paused, s=self._quoted, job_type=job_type, paused=paused)
        )
        self._limited = None
        await self._announce_work()

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the type's settings (defaults when none are stored)."""

        def read(conn: Connection) -> JobTypeLimits:
            row = conn.execute(
                f"SELECT {pg_flow.LIMIT_COLUMNS} FROM {self._quoted}.flow_limits"
                " WHERE job_type = %s",
                (job_type,),
            ).fetchone()
            return JobTypeLimits(job_type) if row is None else pg_flow.limits_from_row(row)

        return await self._run(read)

    async def all_limits(self) -> list[JobTypeLimits]:
        """Return the settings of every type that has any, by type."""

        def read(conn: Connection) -> list[JobTypeLimits]:
            rows = conn.execute(
                f"SELECT {pg_flow.LIMIT_COLUMNS} FROM {self._quoted}.flow_limits ORDER BY job_type"
            ).fetchall()
            return [pg_flow.limits_from_row(row) for row in rows]

        return await self._run(read)

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Store a tenant's weight in fair turns."""

        def write(conn: Connection) -> None:
            conn.execute(
                f"INSERT INTO {self._quoted}.flow_weights (tenant_id, weight) VALUES (%s, %s)"
                " ON CONFLICT (tenant_id) DO UPDATE SET weight = excluded.weight",
                (tenant_id, weight),
            )

        await self._run(write)

    async def flow_usage(self, job_type: str) -> tuple[int, int, dict[str, int]]:
        """``(running, starts in the rate window, running per tenant)`` of the type."""
        return await self._run(partial(pg_flow.usage, s=self._quoted, job_type=job_type))

    async def next_start_in(self, job_type: str) -> float | None:
        """Seconds until the type's rate window lets one more start (None: no rate)."""
        return await self._run(partial(pg_flow.next_start_in, s=self._quoted, job_type=job_type))

    async def _announce_work(self) -> None:
        """Wake every worker on the store (a NOTIFY on the work channel)."""

        def notify(conn: Connection) -> None:
            conn.execute("SELECT pg_notify(%s, '0')", (self._work_channel,))

        await self._run(notify)
