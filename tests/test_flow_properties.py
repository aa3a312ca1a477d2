"""Property: under any flow settings, a claim exceeds no limit and leaves no slot idle.

Hypothesis draws limits, tenants, weights, pauses and how long jobs run (how many
claim rounds they stay RUNNING); the test drives the store's claims by hand, on the
in-memory store (Trio clock: autojump) and on SQLite. After every claim it checks:

- no limit is exceeded: running attempts per type and per tenant, and starts in
  the rate window (an hour long: every start counts);
- the claim is work-conserving: if it took fewer jobs than it asked for, every
  ready job left is held back by a pause or a limit (none waits while a slot is free).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_jobs import Job, JobStatus, JobTypeLimits, MemoryStorage, SQLiteStorage

TYPES = ("a", "b")
TENANTS = (None, "x", "y", "z")

limits_strategy = st.builds(
    JobTypeLimits,
    job_type=st.just("a"),
    max_running=st.none() | st.integers(1, 4),
    max_running_per_tenant=st.none() | st.integers(1, 3),
    rate=st.none() | st.tuples(st.integers(1, 8), st.just(3600.0)),
    fair_tenants=st.booleans(),
    paused=st.booleans(),
)
scenario = st.fixed_dictionaries(
    {
        "limits": limits_strategy,
        "weights": st.dictionaries(st.sampled_from(["x", "y", "z"]), st.floats(0.5, 4.0)),
        "jobs": st.lists(
            st.tuples(st.sampled_from(TYPES), st.sampled_from(TENANTS), st.integers(1, 3)),
            min_size=1,
            max_size=25,
        ),
        "rounds": st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=12),
    }
)


async def run_scenario(store: Any, case: dict[str, Any]) -> None:
    limits: JobTypeLimits = case["limits"]
    paused = limits.paused
    await store.set_limits(limits)
    if paused:
        await store.set_paused("a", True)
    for tenant, weight in case["weights"].items():
        await store.set_tenant_weight(tenant, weight)
    duration: dict[str, int] = {}
    jobs: dict[str, tuple[str, str | None]] = {}
    for job_type, tenant, rounds in case["jobs"]:
        job = Job(id=uuid.uuid4().hex, type=job_type, tenant_id=tenant)
        await store.save(job)
        duration[job.id] = rounds
        jobs[job.id] = (job_type, tenant)
    running: dict[str, Job[Any]] = {}
    starts_a = 0
    for want, toggle in case["rounds"]:
        if toggle:
            paused = not paused
            await store.set_paused("a", paused)
        claimed = await store.claim("w", want, None)
        assert len(claimed) <= want
        for job in claimed:
            running[job.id] = job
            starts_a += job.type == "a"
        # No limit exceeded.
        a_running = [j for j in running.values() if j.type == "a"]
        if limits.max_running is not None:
            assert len(a_running) <= limits.max_running
        if limits.max_running_per_tenant is not None:
            per_tenant = Counter(j.tenant_id for j in a_running)
            assert max(per_tenant.values(), default=0) <= limits.max_running_per_tenant
        if limits.rate is not None:
            assert starts_a <= limits.rate[0]
        if paused:
            assert all(j.type != "a" for j in claimed)
        # Work-conserving: a short claim leaves only held-back jobs ready.
        if len(claimed) < want:
            for job_id, (job_type, tenant) in jobs.items():
                job = await store.get(job_id)
                if job is None or job.status is not JobStatus.PENDING:
                    continue
                assert job_type == "a", "a job of an unlimited type waited"
                tenant_running = sum(1 for j in a_running if j.tenant_id == tenant)
                assert (
                    paused
                    or (limits.max_running is not None and len(a_running) >= limits.max_running)
                    or (limits.rate is not None and starts_a >= limits.rate[0])
                    or (
                        limits.max_running_per_tenant is not None
                        and tenant_running >= limits.max_running_per_tenant
                    )
                ), f"ready job {job_id} of tenant {tenant} waited with a slot free"
        # Time passes: jobs whose duration is over complete.
        for job_id, job in list(running.items()):
            duration[job_id] -= 1
            if duration[job_id] == 0:
                assert await store.settle(
                    job_id, worker_id="w", attempt=job.attempts, status=JobStatus.COMPLETED
                )
                del running[job_id]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario)
def test_memory_claims_obey_limits_and_leave_no_slot_idle(case: dict[str, Any]) -> None:
    async def main() -> None:
        await run_scenario(MemoryStorage(), case)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario)
def test_sqlite_claims_obey_limits_and_leave_no_slot_idle(
    tmp_path_factory: Any, case: dict[str, Any]
) -> None:
    path: Path = tmp_path_factory.mktemp("flow") / "jobs.db"

    async def main() -> None:
        async with SQLiteStorage(path) as store:
            await run_scenario(store, case)

    trio.run(main)
