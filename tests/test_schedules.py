"""Schedules on the Trio clock: exact tick counts, daylight saving, backfill, validation.

The in-memory store under ``autojump_clock``: the runner anchors the Trio clock to
the wall clock when it starts, so virtual hours pass at once and ticks are exact.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from trio_jobs import Job, JobContext, JobRunner, MemoryStorage, Schedule
from trio_jobs._periodic import make_spec


async def record(job: Job[Any], ctx: JobContext) -> None:
    await trio.lowlevel.checkpoint()


def ticks_of(jobs: list[Job[Any]], key: str) -> list[str]:
    return sorted(j.metadata["scheduled_for"] for j in jobs if j.metadata.get("schedule") == key)


async def all_jobs(runner: JobRunner) -> list[Job[Any]]:
    return await runner.storage.list_jobs()


async def test_every_ticks_exactly_on_epoch_multiples_over_virtual_hours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with JobRunner() as runner:
        runner.register_handler("tick", record)
        runner.add_schedule("tick", every=60.0)
        await trio.sleep(3 * 3600)
        jobs = await all_jobs(runner)
        await runner.stop()
    ticks = ticks_of(jobs, "tick")
    # 3 virtual hours of a 60 s period: 180 ticks, give or take the one at the edges.
    assert len(ticks) in (180, 181)
    assert len(set(ticks)) == len(ticks)
    for tick in ticks:
        assert datetime.fromisoformat(tick).timestamp() % 60 == 0
    assert all(j.metadata["schedule"] == "tick" for j in jobs)


async def test_cron_every_15_minutes_for_two_hours(autojump_clock: trio.testing.MockClock) -> None:
    async with JobRunner() as runner:
        runner.register_handler("report", record)
        runner.add_schedule("report", {"x": 1}, cron="*/15 * * * *", key="r")
        await trio.sleep(2 * 3600)
        jobs = await all_jobs(runner)
        await runner.stop()
    ticks = [datetime.fromisoformat(t) for t in ticks_of(jobs, "r")]
    assert len(ticks) == 8
    assert all(t.minute % 15 == 0 and t.second == 0 for t in ticks)
    assert all(j.payload == {"x": 1} for j in jobs)


def test_cron_follows_daylight_saving_in_its_timezone() -> None:
    # Europe/Berlin springs forward on 2024-03-31 (02:00 -> 03:00) and falls back
    # on 2024-10-27: a daily 03:30 local job stays at 03:30 local, so its UTC
    # time moves by an hour across each change.
    spec = make_spec(
        "x", None, cron="30 3 * * *", every=None, key=None, timezone="Europe/Berlin",
        backfill=0.0, options={},
    )  # fmt: skip
    ticks = spec.ticks_after(datetime(2024, 3, 29, 12, tzinfo=UTC))
    first = [next(ticks) for _ in range(3)]
    assert [t.hour for t in first] == [2, 1, 1]  # 03:30 CET, then 03:30 CEST
    ticks = spec.ticks_after(datetime(2024, 10, 25, 12, tzinfo=UTC))
    assert [next(ticks).hour for _ in range(3)] == [1, 2, 2]


async def test_cron_in_a_non_utc_timezone_ticks_across_dst_under_mock_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start the runner's wall clock just before the spring-forward night in New York.
    start = datetime(2024, 3, 9, 12, tzinfo=UTC).timestamp()
    monkeypatch.setattr("trio_jobs._periodic.time.time", lambda: start)
    async with JobRunner() as runner:
        runner.register_handler("nightly", record)
        runner.add_schedule("nightly", cron="0 9 * * *", timezone="America/New_York")
        await trio.sleep(3 * 24 * 3600)
        jobs = await all_jobs(runner)
        await runner.stop()
    ticks = [datetime.fromisoformat(t) for t in ticks_of(jobs, "nightly")]
    # 09:00 EST is 14:00 UTC (on the 9th); from the 10th on, 09:00 EDT is 13:00 UTC.
    assert [(t.day, t.hour) for t in ticks] == [(9, 14), (10, 13), (11, 13)]


async def test_backfill_enqueues_missed_ticks_oldest_first_and_skips_older(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC).timestamp()
    monkeypatch.setattr("trio_jobs._periodic.time.time", lambda: start)
    submitted: list[str] = []
    async with JobRunner() as runner:
        runner.register_handler("b", record)
        runner.on("job:submitted", lambda job: submitted.append(job.metadata["scheduled_for"]))
        runner.add_schedule("b", every=60.0, backfill=300.0)
        await trio.sleep(1)
        await runner.stop()
    # Ticks 11:56 .. 12:00 are at most 300 s old at 12:00:30; 11:55 is older.
    assert submitted == [
        f"2024-01-01T{h}:00+00:00" for h in ("11:56", "11:57", "11:58", "11:59", "12:00")
    ]


async def test_each_tick_is_enqueued_once_by_many_runners_on_one_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStorage()
    async with JobRunner(storage=store) as a, JobRunner(storage=store) as b:
        for runner in (a, b):
            runner.register_handler("t", record)
            runner.add_schedule("t", every=10.0)
        await trio.sleep(1000)
        await a.stop()
        await b.stop()
        jobs = await store.list_jobs()
    counts = Counter(ticks_of(jobs, "t"))
    assert len(counts) in (100, 101)
    assert set(counts.values()) == {1}


async def test_schedules_report_next_and_last_run(autojump_clock: trio.testing.MockClock) -> None:
    async with JobRunner() as runner:
        runner.register_handler("t", record)
        runner.add_schedule("t", every=30.0, key="half-minute")
        before = await runner.schedules()
        assert [s.key for s in before] == ["half-minute"]
        assert before[0].last_run_at is None
        await trio.sleep(61)
        (after,) = await runner.schedules()
        await runner.stop()
    assert isinstance(after, Schedule)
    assert after.job_type == "t"
    assert after.every == 30.0
    assert after.cron is None
    assert after.last_run_at is not None
    assert after.next_run_at is not None
    assert after.next_run_at - after.last_run_at == timedelta(seconds=30)
    assert after.timezone == "UTC"


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({}, ValueError, "cron"),
        ({"cron": "* * * * *", "every": 1.0}, ValueError, "every"),
        ({"every": 0}, ValueError, "every"),
        ({"every": -1}, ValueError, "every"),
        ({"cron": "61 * * * *"}, ValueError, "cron"),
        ({"cron": "* * * *"}, ValueError, "cron"),
        ({"every": 1.0, "timezone": "Mars/Olympus"}, ValueError, "timezone"),
        ({"every": 1.0, "backfill": -1}, ValueError, "backfill"),
        ({"every": 1.0, "priority": 9}, ValueError, "priority"),
    ],
)
def test_add_schedule_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    runner = JobRunner()
    with pytest.raises(error, match=names):
        runner.add_schedule("t", **kwargs)
    assert runner._periodic.specs == {}


def test_two_schedules_with_one_key_are_refused() -> None:
    runner = JobRunner()
    runner.add_schedule("t", every=1.0)
    with pytest.raises(ValueError, match="key"):
        runner.add_schedule("t", cron="* * * * *")
    runner.add_schedule("t", every=1.0, key="other")


async def test_a_schedule_added_inside_the_block_starts_ticking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with JobRunner() as runner:
        runner.register_handler("t", record)
        await trio.sleep(5)
        runner.add_schedule("t", every=10.0)
        await trio.sleep(100)
        jobs = await all_jobs(runner)
        await runner.stop()
    assert len(ticks_of(jobs, "t")) in (10, 11)


async def test_leaving_the_block_stops_ticking_and_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with JobRunner() as runner:
        runner.register_handler("t", record)
        runner.add_schedule("t", every=1.0)
        await trio.sleep(10.5)
    stats = await runner.stats()
    assert stats.completed == len(await runner.storage.list_jobs())
    assert stats.pending == stats.running == 0
