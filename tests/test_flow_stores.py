"""Flow control enforced inside each store's claim (memory, SQLite, PostgreSQL).

The claims are driven by hand, so the tests need no clock: a rate window of an hour
is "full until the test ends", and the order of starts is the order of claims.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from trio_jobs import Job, JobStatus, JobTypeLimits

W = "worker-1"


def new_job(job_type: str = "t", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


async def save_all(store: Any, jobs: list[Job[Any]]) -> list[Job[Any]]:
    for job in jobs:
        await store.save(job)
    return jobs


async def test_max_running_counts_running_jobs_of_every_claimer(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", max_running=2))
    await save_all(store, [new_job() for _ in range(5)])
    first = await store.claim(W, 10, ["t"])
    assert len(first) == 2
    assert await store.claim("worker-2", 10, ["t"]) == []
    job = first[0]
    assert await store.settle(job.id, worker_id=W, attempt=job.attempts, status=JobStatus.COMPLETED)
    assert len(await store.claim("worker-2", 10, ["t"])) == 1
    assert await store.flow_usage("t") == (2, 0, {"": 2})


async def test_a_held_back_type_holds_up_no_other_type(store: Any) -> None:
    await store.set_limits(JobTypeLimits("a", max_running=1))
    held = await save_all(store, [new_job("a") for _ in range(3)])
    free = await save_all(store, [new_job("b") for _ in range(2)])
    claimed = await store.claim(W, 10, None)
    assert {j.id for j in claimed} == {held[0].id, free[0].id, free[1].id}


async def test_a_tenant_at_its_cap_holds_up_no_other_tenant(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", max_running_per_tenant=1))
    a = await save_all(store, [new_job(tenant_id="a") for _ in range(3)])
    b = await save_all(store, [new_job(tenant_id="b")])
    claimed = await store.claim(W, 10, ["t"])
    assert {j.id for j in claimed} == {a[0].id, b[0].id}
    assert await store.claim(W, 10, ["t"]) == []


async def test_rate_caps_starts_in_the_window(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", rate=(2, 3600.0)))
    await save_all(store, [new_job() for _ in range(4)])
    assert len(await store.claim(W, 10, ["t"])) == 2
    assert await store.claim(W, 10, ["t"]) == []
    running, recent, _ = await store.flow_usage("t")
    assert (running, recent) == (2, 2)


async def test_pause_and_resume(store: Any) -> None:
    jobs = await save_all(store, [new_job() for _ in range(2)])
    await store.set_paused("t", True)
    assert (await store.get_limits("t")).paused
    assert await store.claim(W, 10, ["t"]) == []
    assert await store.claim(W, 10, None) == []
    await store.set_paused("t", False)
    assert await store.get_limits("t") == JobTypeLimits("t")
    assert [j.id for j in await store.claim(W, 10, None)] == [j.id for j in jobs]


async def test_set_limits_keeps_the_pause_and_all_limits_lists_them(store: Any) -> None:
    await store.set_paused("t", True)
    await store.set_limits(JobTypeLimits("t", max_running=4, rate=(3, 2.5)))
    await store.set_limits(JobTypeLimits("u", fair_tenants=True))
    assert await store.all_limits() == [
        JobTypeLimits("t", max_running=4, rate=(3, 2.5), paused=True),
        JobTypeLimits("u", fair_tenants=True),
    ]
    await store.set_limits(JobTypeLimits("u"))
    assert [limits.job_type for limits in await store.all_limits()] == ["t"]


async def test_without_fairness_tenants_are_served_fifo(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", max_running=100))
    jobs = await save_all(store, [new_job(tenant_id=t) for t in "aaab"])
    claimed = [(await store.claim(W, 1, ["t"]))[0].id for _ in range(4)]
    assert claimed == [j.id for j in jobs]


async def test_fair_turns_reach_every_small_tenant_early(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", fair_tenants=True))
    await save_all(store, [new_job(tenant_id="big") for _ in range(30)])
    for small in range(5):
        await save_all(store, [new_job(tenant_id=f"s{small}") for _ in range(2)])
    order = [(await store.claim(W, 1, ["t"]))[0].tenant_id for _ in range(12)]
    assert set(order[:6]) == {"big", "s0", "s1", "s2", "s3", "s4"}
    assert set(order[6:12]) == {"big", "s0", "s1", "s2", "s3", "s4"}


async def test_fair_turns_follow_the_weights(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", fair_tenants=True))
    await store.set_tenant_weight("heavy", 2.0)
    for _ in range(40):
        await save_all(store, [new_job(tenant_id="heavy"), new_job(tenant_id="light")])
    claimed: list[Job[Any]] = []
    for _ in range(10):
        claimed += await store.claim(W, 3, ["t"])
    assert Counter(j.tenant_id for j in claimed) == {"heavy": 20, "light": 10}


async def test_an_idle_tenant_banks_no_turns(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", fair_tenants=True))
    await save_all(store, [new_job(tenant_id="a") for _ in range(10)])
    for _ in range(6):
        await store.claim(W, 1, ["t"])
    # "b" arrives late: it takes turns with "a" from now on, no catching up.
    await save_all(store, [new_job(tenant_id="b") for _ in range(10)])
    order = [(await store.claim(W, 1, ["t"]))[0].tenant_id for _ in range(4)]
    assert Counter(order) == {"a": 2, "b": 2}
