"""Flow control on the in-memory store: caps, limits, pauses, rates and fair turns."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_jobs import Job, JobContext, JobRunner, JobTypeLimits, MemoryStorage


def recorder(log: list[tuple[float, Any]], duration: float = 1.0) -> Any:
    async def handler(job: Job[Any], ctx: JobContext[Any]) -> None:
        log.append((trio.current_time(), job.payload))
        await trio.sleep(duration)

    return handler


async def test_register_handler_concurrency_caps_a_type_in_this_runner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = {"slow": 0, "fast": 0}
    peak = {"slow": 0, "fast": 0}

    def handler(kind: str) -> Any:
        async def run(job: Job[Any], ctx: JobContext[Any]) -> None:
            running[kind] += 1
            peak[kind] = max(peak[kind], running[kind])
            await trio.sleep(1)
            running[kind] -= 1

        return run

    async with JobRunner(concurrency=10) as runner:
        runner.register_handler("slow", handler("slow"), concurrency=2)
        runner.register_handler("fast", handler("fast"))
        handles = [await runner.submit("slow") for _ in range(6)]
        handles += [await runner.submit("fast") for _ in range(6)]
        start = trio.current_time()
        for handle in handles:
            await handle.wait()
        # 6 slow jobs, 2 at a time: 3 rounds; the fast ones all ran in the first.
        assert trio.current_time() - start == 3
    assert peak == {"slow": 2, "fast": 6}


async def test_register_handler_rejects_a_bad_concurrency() -> None:
    runner = JobRunner()

    async def handler(job: Job[Any], ctx: JobContext[Any]) -> None:
        pass

    with pytest.raises(ValueError, match="concurrency"):
        runner.register_handler("t", handler, concurrency=0)
    with pytest.raises(TypeError, match="concurrency"):
        runner.register_handler("t", handler, concurrency=1.5)  # type: ignore[arg-type]
    assert runner.job_types == frozenset()


async def test_limits_are_stored_and_read_back() -> None:
    store = MemoryStorage()
    async with JobRunner(storage=store) as runner:
        assert await runner.get_limits("a") == JobTypeLimits("a")
        await runner.set_limits("a", max_running=3, rate=(20, 1.0), fair_tenants=True)
        await runner.pause("a")
        assert await runner.get_limits("a") == JobTypeLimits(
            "a", max_running=3, rate=(20, 1.0), fair_tenants=True, paused=True
        )
        # New limits replace the old ones; the pause stays.
        await runner.set_limits("a", max_running_per_tenant=1)
        assert await runner.get_limits("a") == JobTypeLimits(
            "a", max_running_per_tenant=1, paused=True
        )
        await runner.resume("a")
        assert (await runner.get_limits("a")).paused is False


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"max_running": 0}, ValueError, "max_running"),
        ({"max_running": "3"}, TypeError, "max_running"),
        ({"max_running_per_tenant": -1}, ValueError, "max_running_per_tenant"),
        ({"rate": (0, 1.0)}, ValueError, "rate"),
        ({"rate": (5, 0)}, ValueError, "rate"),
        ({"rate": (5, float("inf"))}, ValueError, "rate"),
        ({"rate": 5}, TypeError, "rate"),
        ({"fair_tenants": 1}, TypeError, "fair_tenants"),
    ],
)
async def test_set_limits_rejects_bad_input_before_storing(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    async with JobRunner() as runner:
        await runner.set_limits("a", max_running=2)
        with pytest.raises(error, match=name):
            await runner.set_limits("a", **kwargs)
        assert await runner.get_limits("a") == JobTypeLimits("a", max_running=2)


async def test_set_tenant_weight_rejects_bad_input() -> None:
    async with JobRunner() as runner:
        with pytest.raises(ValueError, match="weight"):
            await runner.set_tenant_weight("t", 0)
        with pytest.raises(TypeError, match="tenant_id"):
            await runner.set_tenant_weight(1, 1.0)  # type: ignore[arg-type]


async def test_max_running_holds_back_a_type_but_not_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, Any]] = []
    async with JobRunner(concurrency=10) as runner:
        await runner.set_limits("api", max_running=2)
        runner.register_handler("api", recorder(log))
        runner.register_handler("other", recorder(log))
        for i in range(4):
            await runner.submit("api", f"api{i}")
        await runner.submit("other", "other")
        await runner.join()
    assert sorted(log) == [
        (0.0, "api0"),
        (0.0, "api1"),
        (0.0, "other"),
        (1.0, "api2"),
        (1.0, "api3"),
    ]


async def test_a_tenant_at_its_cap_holds_up_no_other_tenant(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, Any]] = []
    async with JobRunner(concurrency=10) as runner:
        await runner.set_limits("t", max_running_per_tenant=1)
        runner.register_handler("t", recorder(log))
        for i in range(3):
            await runner.submit("t", f"a{i}", tenant_id="a")
        await runner.submit("t", "b0", tenant_id="b")
        await runner.join()
    assert log == [(0.0, "a0"), (0.0, "b0"), (1.0, "a1"), (2.0, "a2")]


async def test_rate_allows_n_starts_per_window(autojump_clock: trio.testing.MockClock) -> None:
    log: list[tuple[float, Any]] = []
    async with JobRunner(concurrency=10) as runner:
        await runner.set_limits("sms", rate=(2, 10.0))
        runner.register_handler("sms", recorder(log, duration=0.5))
        for i in range(5):
            await runner.submit("sms", i)
        await runner.join()
    assert sorted(log) == [(0.0, 0), (0.0, 1), (10.0, 2), (10.0, 3), (20.0, 4)]


async def test_pause_stops_claims_and_resume_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, Any]] = []
    async with JobRunner(concurrency=10) as runner:
        runner.register_handler("mail", recorder(log))
        await runner.pause("mail")
        handle = await runner.submit("mail", "m")
        await trio.sleep(100)
        assert log == []
        job = await runner.get_job(handle.id)
        assert job is not None
        assert job.status == "pending"
        await runner.resume("mail")
        await handle.wait()
    assert log == [(100.0, "m")]


async def test_clearing_limits_puts_the_type_back_on_the_fast_path(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[float, Any]] = []
    async with JobRunner(concurrency=10) as runner:
        runner.register_handler("t", recorder(log))
        await runner.pause("t")
        for i in range(3):
            await runner.submit("t", i)
        await runner.set_limits("t", max_running=1)
        await runner.resume("t")
        await trio.sleep(0.5)
        await runner.set_limits("t")  # no limits at all: the rest go at once
        await runner.join()
    assert sorted(log) == [(0.0, 0), (0.5, 1), (0.5, 2)]


async def test_fair_turns_give_every_small_tenant_an_early_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[str] = []

    async def handler(job: Job[Any], ctx: JobContext[Any]) -> None:
        order.append(job.tenant_id or "")
        await trio.sleep(1)

    store = MemoryStorage()
    async with JobRunner(storage=store, concurrency=10) as runner:
        await runner.set_limits("t", fair_tenants=True)
        runner.register_handler("t", handler)
        await runner.pause("t")
        for _ in range(2000):
            await runner.submit("t", tenant_id="big")
        for tenant in range(100):
            for _ in range(10):
                await runner.submit("t", tenant_id=f"small{tenant}")
        await runner.resume("t")
        with trio.move_on_after(50):
            await runner.join()
        await runner.stop(graceful=False)
    first = order[:200]
    assert {f"small{t}" for t in range(100)} <= set(first)


async def test_weights_two_to_one_give_two_to_one_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[str] = []

    async def handler(job: Job[Any], ctx: JobContext[Any]) -> None:
        order.append(job.tenant_id or "")
        await trio.sleep(1)

    async with JobRunner(concurrency=10) as runner:
        await runner.set_limits("t", fair_tenants=True)
        await runner.set_tenant_weight("heavy", 2)
        runner.register_handler("t", handler)
        await runner.pause("t")
        for _ in range(1000):
            await runner.submit("t", tenant_id="heavy")
            await runner.submit("t", tenant_id="light")
        await runner.resume("t")
        with trio.move_on_after(60):
            await runner.join()
        await runner.stop(graceful=False)
    both = order[:600]  # both still have jobs ready throughout
    heavy, light = both.count("heavy"), both.count("light")
    assert heavy / light == pytest.approx(2.0, rel=0.05)


async def test_without_fairness_tenants_are_fifo(autojump_clock: trio.testing.MockClock) -> None:
    order: list[str] = []

    async def handler(job: Job[Any], ctx: JobContext[Any]) -> None:
        order.append(job.payload)
        await trio.sleep(1)

    async with JobRunner(concurrency=1) as runner:
        await runner.set_limits("t", max_running=5)
        runner.register_handler("t", handler)
        await runner.pause("t")
        for i in range(3):
            await runner.submit("t", f"a{i}", tenant_id="a")
        await runner.submit("t", "b0", tenant_id="b")
        await runner.resume("t")
        await runner.join()
    assert order == ["a0", "a1", "a2", "b0"]
