"""Flow control in PostgreSQL: the settings and the limited claim.

The usual claim (one statement, ``_sql``) never takes a job of a type that has
flow settings: it reads ``flow_limits`` itself. Such types are claimed here, in
one transaction:

1. lock the ``flow_limits`` rows of the claim's limited types, in key order (two
   claimers of one limited type queue here; no deadlock between them);
2. in that transaction's later statements (READ COMMITTED: each sees what
   committed before it began, so the counts include every claim that held the
   lock before us), count the type's running jobs per tenant from the jobs
   themselves, find the tenants with ready jobs by a loose index scan (a
   recursive CTE, one index probe per tenant, never a GROUP BY over the queue),
   and take each tenant's best jobs with a LATERAL probe;
3. choose with ``trio_jobs._flow.choose`` (the same rules as every store), mark
   the chosen jobs RUNNING, and store the rate window and the tenants' turns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from ..._flow import JobTypeLimits, TypeBudget, choose, rate_wait, rate_window, tenant_key
from ..._records import Job
from ._rows import row_to_job
from ._sql import JOB_COLUMNS

LIMIT_COLUMNS = (
    "job_type, max_running, max_running_per_tenant, rate_starts, rate_seconds, fair_tenants, paused"
)
_READY = "status IN ('pending', 'retrying') AND ready_at <= now()"
_ORDER = "priority DESC, ready_at, seq"


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


def store_limits(conn: Any, s: str, limits: JobTypeLimits, *, keep_paused: bool) -> None:
    """Write a type's settings (``keep_paused``: all but the stored pause); drop empty rows."""
    rate = limits.rate or (None, None)
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {s}.flow_limits ({LIMIT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_type) DO UPDATE SET max_running = excluded.max_running,"
            " max_running_per_tenant = excluded.max_running_per_tenant,"
            " rate_starts = excluded.rate_starts, rate_seconds = excluded.rate_seconds,"
            " fair_tenants = excluded.fair_tenants,"
            f" paused = {'flow_limits.paused' if keep_paused else 'excluded.paused'}",
            (
                limits.job_type,
                limits.max_running,
                limits.max_running_per_tenant,
                rate[0],
                rate[1],
                limits.fair_tenants,
                limits.paused,
            ),
        )
        conn.execute(
            f"DELETE FROM {s}.flow_limits WHERE job_type = %s AND max_running IS NULL"
            " AND max_running_per_tenant IS NULL AND rate_starts IS NULL"
            " AND NOT fair_tenants AND NOT paused",
            (limits.job_type,),
        )


def set_paused(conn: Any, s: str, job_type: str, paused: bool) -> None:
    """Pause or resume ``job_type``."""
    row = conn.execute(
        f"SELECT {LIMIT_COLUMNS} FROM {s}.flow_limits WHERE job_type = %s", (job_type,)
    ).fetchone()
    old = JobTypeLimits(job_type) if row is None else limits_from_row(row)
    store_limits(conn, s, attrs.evolve(old, paused=paused), keep_paused=False)


def limited_types(conn: Any, s: str) -> frozenset[str]:
    """The types that have flow settings now."""
    return frozenset(r[0] for r in conn.execute(f"SELECT job_type FROM {s}.flow_limits"))


def usage(conn: Any, s: str, job_type: str) -> tuple[int, int, dict[str, int]]:
    """``(running, starts in the rate window, running per tenant)`` of ``job_type``."""
    tenants = _running(conn, s, job_type)
    row = conn.execute(
        f"SELECT rate_seconds, (SELECT count(*) FROM unnest(starts) AS at"
        "   WHERE at > extract(epoch FROM now()) - rate_seconds)"
        f" FROM {s}.flow_limits WHERE job_type = %s",
        (job_type,),
    ).fetchone()
    recent = int(row[1]) if row is not None and row[0] is not None else 0
    return sum(tenants.values()), recent, tenants


def next_start_in(conn: Any, s: str, job_type: str) -> float | None:
    """Seconds until ``job_type``'s rate window lets one more start (None: no rate)."""
    row = conn.execute(
        f"SELECT rate_starts, rate_seconds, starts, extract(epoch FROM now())"
        f" FROM {s}.flow_limits WHERE job_type = %s",
        (job_type,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return rate_wait(
        [float(at) for at in row[2] or ()], (int(row[0]), float(row[1])), float(row[3])
    )


def _running(conn: Any, s: str, job_type: str) -> dict[str, int]:
    rows = conn.execute(
        f"SELECT tenant_id, count(*) FROM {s}.jobs WHERE status = 'running' AND type = %s"
        " GROUP BY tenant_id",
        (job_type,),
    )
    return {tenant_key(tenant): int(count) for tenant, count in rows}


def _tenants(conn: Any, s: str, job_type: str) -> list[str | None]:
    """Tenants with ready jobs of ``job_type``: a loose index scan, one probe each."""
    rows = conn.execute(
        f"""
        WITH RECURSIVE t(tenant) AS (
            (SELECT tenant_id FROM {s}.jobs WHERE type = %(type)s AND {_READY}
                AND tenant_id IS NOT NULL ORDER BY tenant_id LIMIT 1)
            UNION ALL
            SELECT (SELECT tenant_id FROM {s}.jobs WHERE type = %(type)s AND {_READY}
                AND tenant_id > t.tenant ORDER BY tenant_id LIMIT 1)
            FROM t WHERE t.tenant IS NOT NULL
        )
        SELECT tenant FROM t WHERE tenant IS NOT NULL
        UNION ALL
        SELECT NULL WHERE EXISTS (SELECT 1 FROM {s}.jobs WHERE type = %(type)s AND {_READY}
            AND tenant_id IS NULL)
        """,
        {"type": job_type},
    )
    return [row[0] for row in rows]


def _heads(
    conn: Any, s: str, job_type: str, counts: dict[str | None, int]
) -> dict[str, list[tuple[Any, Any]]]:
    """Each tenant's best ``counts[tenant]`` ready jobs, by one LATERAL probe per tenant."""
    tenants = [t for t in counts if t is not None]
    rows = conn.execute(
        f"""
        SELECT t.tenant, h.id, h.priority, h.ready_at, h.seq
        FROM unnest(%(tenants)s::text[], %(counts)s::int[]) AS t(tenant, n)
        CROSS JOIN LATERAL (
            SELECT id, priority, ready_at, seq FROM {s}.jobs
            WHERE type = %(type)s AND tenant_id = t.tenant AND {_READY}
            ORDER BY {_ORDER} LIMIT t.n
        ) AS h
        UNION ALL
        SELECT NULL, id, priority, ready_at, seq FROM (
            SELECT id, priority, ready_at, seq FROM {s}.jobs
            WHERE %(null_n)s > 0 AND type = %(type)s AND tenant_id IS NULL AND {_READY}
            ORDER BY {_ORDER} LIMIT %(null_n)s
        ) AS n
        """,
        {
            "tenants": tenants,
            "counts": [counts[t] for t in tenants],
            "type": job_type,
            "null_n": counts.get(None, 0),
        },
    )
    heads: dict[str, list[tuple[Any, Any]]] = {}
    for tenant, job_id, priority, ready_at, seq in rows:
        heads.setdefault(tenant_key(tenant), []).append(((-priority, ready_at, seq), job_id))
    for found in heads.values():
        found.sort()
    return heads


def claim_limited(
    conn: Any,
    s: str,
    *,
    worker_id: str,
    limit: int,
    types: list[str] | None,
    lease: float,
) -> list[Job[Any]] | None:
    """Claim up to ``limit`` jobs of ``types`` (None: all) obeying the flow settings.

    Returns None (claiming nothing) when none of ``types`` has settings.

    See the module docs. Jobs of types without settings among ``types`` take part
    too, in claim order, so a claim never takes a worse job before a better one.
    """
    with conn.transaction():
        rows = conn.execute(
            f"SELECT {LIMIT_COLUMNS}, starts, extract(epoch FROM now())"
            f" FROM {s}.flow_limits WHERE %(types)s::text[] IS NULL OR job_type = ANY(%(types)s)"
            " ORDER BY job_type FOR UPDATE",
            {"types": types},
        ).fetchall()
        if not rows:
            return None
        now = float(rows[0][8])
        flow = {row[0]: (limits_from_row(row), list(row[7])) for row in rows}
        limited = list(flow)
        free = [
            ((-priority, ready_at, seq), job_id)
            for job_id, priority, ready_at, seq in conn.execute(
                f"SELECT id, priority, ready_at, seq FROM {s}.jobs WHERE {_READY}"
                " AND NOT (type = ANY(%(limited)s))"
                " AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s))"
                f" ORDER BY {_ORDER} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                {"limited": limited, "types": types, "limit": limit},
            )
        ]
        weights: dict[str, float] | None = None
        plans: dict[str, tuple[TypeBudget, dict[str, list[tuple[Any, Any]]]]] = {}
        for job_type, (limits, starts) in flow.items():
            if limits.paused:
                continue
            counted = _running(conn, s, job_type)
            passes: dict[str, tuple[float, float]] = {}
            if limits.fair_tenants:
                if weights is None:
                    weights = {
                        t: float(w)
                        for t, w in conn.execute(f"SELECT tenant_id, weight FROM {s}.flow_weights")
                    }
                passes = {
                    t: (float(p), float(v))
                    for t, p, v in conn.execute(
                        f"SELECT tenant, pass, served FROM {s}.flow_turns WHERE job_type = %s",
                        (job_type,),
                    )
                }
            by_tenant = limits.fair_tenants or limits.max_running_per_tenant is not None
            tenants = _tenants(conn, s, job_type) if by_tenant else []
            budget = TypeBudget(
                limits,
                running=sum(counted.values()),
                running_by_tenant=counted,
                starts=starts,
                now=now,
                passes=passes,
                weights=weights,
                ready_tenants=[tenant_key(t) for t in tenants],
            )
            room = int(min(budget.room, limit))
            if room <= 0:
                continue
            if by_tenant:
                cap = limits.max_running_per_tenant
                counts = {
                    t: room if cap is None else min(room, cap - counted.get(tenant_key(t), 0))
                    for t in tenants
                }
                heads = _heads(conn, s, job_type, {t: n for t, n in counts.items() if n > 0})
            else:
                heads = {
                    "": [
                        ((-priority, ready_at, seq), job_id)
                        for job_id, priority, ready_at, seq in conn.execute(
                            f"SELECT id, priority, ready_at, seq FROM {s}.jobs"
                            f" WHERE type = %s AND {_READY} ORDER BY {_ORDER} LIMIT %s",
                            (job_type, room),
                        )
                    ]
                }
            if any(heads.values()):
                plans[job_type] = (budget, heads)
        chosen: list[str] = choose(limit, free, plans)
        for job_type, (budget, _) in plans.items():
            if budget.started:
                _record_starts(conn, s, job_type, flow[job_type], budget, now)
        if not chosen:
            return []
        claimed = conn.execute(
            f"""
            UPDATE {s}.jobs AS j SET
                status = 'running',
                attempts = j.attempts + 1,
                started_at = now(),
                worker_id = %(worker_id)s,
                lease_expires_at = now() + %(lease)s * interval '1 second',
                cancel_requested = false,
                delayed = false,
                op_token = %(token)s
            WHERE j.id = ANY(%(ids)s) AND j.status IN ('pending', 'retrying')
            RETURNING {", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))}
            """,
            {"worker_id": worker_id, "lease": lease, "token": uuid.uuid4().hex, "ids": chosen},
        ).fetchall()
    jobs = [row_to_job(row) for row in claimed]
    jobs.sort(key=lambda job: (-job.priority, chosen.index(job.id)))
    return jobs


def _record_starts(
    conn: Any,
    s: str,
    job_type: str,
    flow: tuple[JobTypeLimits, list[float]],
    budget: TypeBudget,
    now: float,
) -> None:
    limits, starts = flow
    if limits.rate is not None:
        window = rate_window(starts, limits.rate, len(budget.started), now)
        conn.execute(
            f"UPDATE {s}.flow_limits SET starts = %s WHERE job_type = %s",
            (window, job_type),
        )
    if limits.fair_tenants:
        turns = budget.passes_of(set(budget.started))
        conn.execute(
            f"INSERT INTO {s}.flow_turns (job_type, tenant, pass, served)"
            " SELECT %(type)s, * FROM unnest(%(tenants)s::text[], %(passes)s::float8[],"
            " %(served)s::float8[])"
            " ON CONFLICT (job_type, tenant) DO UPDATE SET pass = excluded.pass,"
            " served = excluded.served",
            {
                "type": job_type,
                "tenants": list(turns),
                "passes": [p for p, _ in turns.values()],
                "served": [v for _, v in turns.values()],
            },
        )
