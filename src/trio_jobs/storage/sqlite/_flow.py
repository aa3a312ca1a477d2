"""Flow control in SQLite: the settings' tables and the claim that obeys them.

A claim runs in one ``BEGIN IMMEDIATE`` transaction, so it reads the limits,
counts the running jobs of each limited type (from the jobs themselves), reads
the rate window and the tenants' turns, picks (``trio_jobs._flow.choose``) and
writes, with no other writer in between: nothing to lock beyond that.

A claim over types none of which has settings pays one read of the tiny
``flow_limits`` table and takes the usual path.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

import attrs

from ..._flow import JobTypeLimits, TypeBudget, choose, rate_wait, rate_window, tenant_key
from .._codec import decode_json, encode_json
from ._commit import Op
from ._schema import CLAIM_ORDER, DUE

T = TypeVar("T")

LIMIT_COLUMNS: Final = (
    "job_type, max_running, max_running_per_tenant, rate_starts, rate_seconds, fair_tenants, paused"
)
_READY: Final = "status IN ('pending', 'retrying')"


def limits_from_row(row: Sequence[Any]) -> JobTypeLimits:
    """A :class:`JobTypeLimits` from a row of ``LIMIT_COLUMNS``."""
    return JobTypeLimits(
        job_type=row[0],
        max_running=row[1],
        max_running_per_tenant=row[2],
        rate=None if row[3] is None else (int(row[3]), float(row[4])),
        fair_tenants=bool(row[5]),
        paused=bool(row[6]),
    )


def store_limits(conn: sqlite3.Connection, limits: JobTypeLimits, *, keep_paused: bool) -> None:
    """Write a type's settings (``keep_paused``: all but the stored pause); drop empty rows."""
    rate = limits.rate or (None, None)
    conn.execute(
        f"INSERT INTO flow_limits ({LIMIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (job_type) DO UPDATE SET max_running = excluded.max_running,"
        " max_running_per_tenant = excluded.max_running_per_tenant,"
        " rate_starts = excluded.rate_starts, rate_seconds = excluded.rate_seconds,"
        " fair_tenants = excluded.fair_tenants,"
        f" paused = {'paused' if keep_paused else 'excluded.paused'}",
        (
            limits.job_type,
            limits.max_running,
            limits.max_running_per_tenant,
            rate[0],
            rate[1],
            int(limits.fair_tenants),
            int(limits.paused),
        ),
    )
    conn.execute(
        "DELETE FROM flow_limits WHERE job_type = ? AND max_running IS NULL"
        " AND max_running_per_tenant IS NULL AND rate_starts IS NULL AND NOT fair_tenants"
        " AND NOT paused",
        (limits.job_type,),
    )


def read_flow(
    conn: sqlite3.Connection, types: tuple[str, ...] | None
) -> dict[str, tuple[JobTypeLimits, list[float]]]:
    """The settings and rate windows of the limited types among ``types`` (None: all)."""
    sql = f"SELECT {LIMIT_COLUMNS}, starts FROM flow_limits"
    if types is not None:
        sql += f" WHERE job_type IN ({', '.join('?' * len(types))})"
    return {
        row[0]: (limits_from_row(row), decode_json(row[7]))
        for row in conn.execute(sql, types or ())
    }


def running_by_tenant(conn: sqlite3.Connection, job_type: str) -> dict[str, int]:
    """Running attempts of ``job_type`` per tenant key, counted from the jobs."""
    rows = conn.execute(
        "SELECT tenant_id, count(*) FROM jobs WHERE status = 'running' AND type = ?"
        " GROUP BY tenant_id",
        (job_type,),
    )
    return {tenant_key(tenant): int(count) for tenant, count in rows}


def _tenants(conn: sqlite3.Connection, job_type: str) -> list[str | None]:
    """The tenants with ready jobs of ``job_type``: a loose index scan (one seek each)."""
    found: list[str | None] = []
    if conn.execute(
        f"SELECT 1 FROM jobs INDEXED BY jobs_tenant_ready WHERE type = ? AND {_READY}"
        " AND tenant_id IS NULL LIMIT 1",
        (job_type,),
    ).fetchone():
        found.append(None)
    rows = conn.execute(
        "WITH RECURSIVE t(tenant) AS ("
        f" SELECT (SELECT min(tenant_id) FROM jobs WHERE type = ?1 AND {_READY})"
        " UNION ALL"
        f" SELECT (SELECT min(tenant_id) FROM jobs WHERE type = ?1 AND {_READY}"
        "   AND tenant_id > t.tenant) FROM t WHERE t.tenant IS NOT NULL"
        ") SELECT tenant FROM t WHERE tenant IS NOT NULL",
        (job_type,),
    )
    found.extend(tenant for (tenant,) in rows)
    return found


def _heads(
    conn: sqlite3.Connection, job_type: str, tenant: str | None, now: float, count: int
) -> list[tuple[Any, Any]]:
    rows = conn.execute(
        "SELECT seq, priority, run_at FROM jobs INDEXED BY jobs_tenant_ready"
        f" WHERE type = ? AND tenant_id IS ? AND {_READY} AND run_at <= ?"
        f" {CLAIM_ORDER} LIMIT ?",
        (job_type, tenant, now, count),
    )
    return [((-priority, run_at, seq), seq) for seq, priority, run_at in rows]


def plan_claim(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    types: tuple[str, ...] | None,
    flow: dict[str, tuple[JobTypeLimits, list[float]]],
) -> list[int]:
    """Choose the ``seq`` of up to ``limit`` jobs to claim, obeying ``flow``; record it.

    Writes the new rate windows and fair turns of the types that start jobs.
    """
    limited = tuple(flow)
    where = f" AND type NOT IN ({', '.join('?' * len(limited))})"
    params: tuple[Any, ...] = limited
    if types is not None:
        where += f" AND type IN ({', '.join('?' * len(types))})"
        params += types
    free = [
        ((-priority, run_at, seq), seq)
        for seq, priority, run_at in conn.execute(
            f"SELECT seq, priority, run_at FROM jobs INDEXED BY jobs_ready WHERE {DUE}{where}"
            f" {CLAIM_ORDER} LIMIT ?",
            (now, *params, limit),
        )
    ]
    weights: dict[str, float] | None = None
    plans: dict[str, tuple[TypeBudget, dict[str, list[tuple[Any, Any]]]]] = {}
    for job_type, (limits, starts) in flow.items():
        if limits.paused:
            continue
        by_tenant = limits.fair_tenants or limits.max_running_per_tenant is not None
        tenants: list[str | None] = _tenants(conn, job_type) if by_tenant else [None]
        keys = [tenant_key(t) for t in tenants]
        passes: dict[str, tuple[float, float]] = {}
        if limits.fair_tenants:
            if weights is None:
                weights = dict(conn.execute("SELECT tenant_id, weight FROM flow_weights"))
            passes = {
                tenant: (pass_, served)
                for tenant, pass_, served in conn.execute(
                    "SELECT tenant, pass, served FROM flow_turns WHERE job_type = ?", (job_type,)
                )
            }
        counted = running_by_tenant(conn, job_type)
        budget = TypeBudget(
            limits,
            running=sum(counted.values()),
            running_by_tenant=counted,
            starts=starts,
            now=now,
            passes=passes,
            weights=weights,
            ready_tenants=keys,
        )
        room = int(min(budget.room, limit))
        if room <= 0:
            continue
        heads: dict[str, list[tuple[Any, Any]]] = {}
        for tenant, key in zip(tenants, keys, strict=True):
            count = room
            cap = limits.max_running_per_tenant
            if cap is not None:
                count = min(count, cap - counted.get(key, 0))
            if count > 0:
                if by_tenant:
                    found = _heads(conn, job_type, tenant, now, count)
                else:
                    found = _type_heads(conn, job_type, now, count)
                if found:
                    heads[key] = found
        if heads:
            plans[job_type] = (budget, heads)
    chosen: list[int] = choose(limit, free, plans)
    for job_type, (budget, _) in plans.items():
        if budget.started:
            _record_starts(conn, job_type, flow[job_type], budget, now)
    return chosen


def _type_heads(
    conn: sqlite3.Connection, job_type: str, now: float, count: int
) -> list[tuple[Any, Any]]:
    rows = conn.execute(
        f"SELECT seq, priority, run_at FROM jobs INDEXED BY jobs_ready WHERE {DUE}"
        f" AND type = ? {CLAIM_ORDER} LIMIT ?",
        (now, job_type, count),
    )
    return [((-priority, run_at, seq), seq) for seq, priority, run_at in rows]


def _record_starts(
    conn: sqlite3.Connection,
    job_type: str,
    flow: tuple[JobTypeLimits, list[float]],
    budget: TypeBudget,
    now: float,
) -> None:
    limits, starts = flow
    if limits.rate is not None:
        window = rate_window(starts, limits.rate, len(budget.started), now)
        conn.execute(
            "UPDATE flow_limits SET starts = ? WHERE job_type = ?",
            (encode_json(window, "starts"), job_type),
        )
    if limits.fair_tenants:
        conn.executemany(
            "INSERT INTO flow_turns (job_type, tenant, pass, served) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job_type, tenant) DO UPDATE SET pass = excluded.pass,"
            " served = excluded.served",
            [
                (job_type, tenant, pass_, served)
                for tenant, (pass_, served) in budget.passes_of(set(budget.started)).items()
            ],
        )


def recent_starts(starts: Iterable[float], limits: JobTypeLimits, now: float) -> int:
    """How many of ``starts`` fall in the rate window ending ``now``."""
    if limits.rate is None:
        return 0
    return sum(1 for at in starts if at > now - limits.rate[1])


class FlowQueries:
    """The flow-control settings of a SQLite store (a base of :class:`SQLiteStorage`)."""

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a read (the store provides it)."""
        raise NotImplementedError

    async def _write(self, op: Op[T]) -> T:
        """Run ``op`` in a group-committed write transaction (the store provides it)."""
        raise NotImplementedError

    def _note_work(self) -> None:
        """In a write: wake other processes' waiting stores once it commits (the store)."""
        raise NotImplementedError

    def _work_at(self, when: float | None) -> None:
        """Wake this store's work waiters now or at ``when`` (the store provides it)."""
        raise NotImplementedError

    async def set_limits(self, limits: JobTypeLimits) -> None:
        """Store the type's limits (its paused flag stays as it is)."""

        def op(conn: sqlite3.Connection, now: float) -> None:
            store_limits(conn, limits, keep_paused=True)
            self._note_work()

        await self._write(op)
        self._work_at(None)

    async def set_paused(self, job_type: str, paused: bool) -> None:
        """Pause or resume claims of ``job_type``."""

        def op(conn: sqlite3.Connection, now: float) -> None:
            row = conn.execute(
                f"SELECT {LIMIT_COLUMNS} FROM flow_limits WHERE job_type = ?", (job_type,)
            ).fetchone()
            old = JobTypeLimits(job_type) if row is None else limits_from_row(row)
            store_limits(conn, attrs.evolve(old, paused=paused), keep_paused=False)
            self._note_work()

        await self._write(op)
        self._work_at(None)

    async def get_limits(self, job_type: str) -> JobTypeLimits:
        """Return the type's settings (defaults when none are stored)."""
        rows = await self._read(
            f"SELECT {LIMIT_COLUMNS} FROM flow_limits WHERE job_type = ?", (job_type,)
        )
        return limits_from_row(rows[0]) if rows else JobTypeLimits(job_type)

    async def all_limits(self) -> list[JobTypeLimits]:
        """Return the settings of every type that has any, by type."""
        rows = await self._read(f"SELECT {LIMIT_COLUMNS} FROM flow_limits ORDER BY job_type")
        return [limits_from_row(row) for row in rows]

    async def set_tenant_weight(self, tenant_id: str, weight: float) -> None:
        """Store a tenant's weight in fair turns."""

        def op(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "INSERT INTO flow_weights (tenant_id, weight) VALUES (?, ?)"
                " ON CONFLICT (tenant_id) DO UPDATE SET weight = excluded.weight",
                (tenant_id, weight),
            )

        await self._write(op)

    async def flow_usage(self, job_type: str) -> tuple[int, int, dict[str, int]]:
        """``(running, starts in the rate window, running per tenant)`` of the type."""
        rows = await self._read(
            "SELECT tenant_id, count(*) FROM jobs WHERE status = 'running' AND type = ?"
            " GROUP BY tenant_id",
            (job_type,),
        )
        tenants = {tenant_key(tenant): int(count) for tenant, count in rows}
        flow = await self._read(
            f"SELECT {LIMIT_COLUMNS}, starts FROM flow_limits WHERE job_type = ?", (job_type,)
        )
        recent = 0
        if flow:
            recent = recent_starts(decode_json(flow[0][7]), limits_from_row(flow[0]), time.time())
        return sum(tenants.values()), recent, tenants

    async def next_start_in(self, job_type: str) -> float | None:
        """Seconds until the type's rate window lets one more start (None: no rate)."""
        flow = await self._read(
            f"SELECT {LIMIT_COLUMNS}, starts FROM flow_limits WHERE job_type = ?", (job_type,)
        )
        if not flow:
            return None
        return rate_wait(decode_json(flow[0][7]), limits_from_row(flow[0]).rate, time.time())
