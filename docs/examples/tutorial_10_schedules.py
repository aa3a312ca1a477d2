"""Tutorial step 10: schedules and unique jobs."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import trio
import trio.testing

from trio_jobs import Job, JobContext, JobRunner


async def main() -> None:
    ticks: list[datetime] = []
    three_digests = trio.Event()

    async def send_digest(job: Job[str], ctx: JobContext[None]) -> None:
        # A scheduled job says which schedule enqueued it, and for which tick.
        tick = datetime.fromisoformat(job.metadata["scheduled_for"])
        after = f"{(tick - ticks[-1]).total_seconds():.0f} s after the last" if ticks else "first"
        ticks.append(tick)
        print(f"digest to {job.payload} ({job.metadata['schedule']}): {after}")
        if len(ticks) == 3:
            three_digests.set()
        await trio.sleep(1)  # send it

    async def rebuild_index(job: Job[str], ctx: JobContext[None]) -> str:
        await trio.sleep(30)
        return f"{job.payload} rebuilt"

    async with JobRunner() as runner:
        runner.register_handler("digest", send_digest)
        runner.register_handler("rebuild", rebuild_index)

        # Every 10 minutes, on multiples of 600 s since the epoch (:00, :10, ...).
        runner.add_schedule("digest", "ops@example.com", every=600, key="ops-digest")
        # At 09:00 on weekdays, Paris time (daylight saving followed).
        runner.add_schedule("rebuild", "catalog", cron="0 9 * * 1-5", timezone="Europe/Paris")
        for schedule in await runner.schedules():
            if schedule.cron is None:
                print(f"schedule {schedule.key}: every {schedule.every:.0f} s")
            else:
                assert schedule.next_run_at is not None  # UTC
                zone = schedule.timezone
                local = schedule.next_run_at.astimezone(ZoneInfo(zone))
                print(f"schedule {schedule.key}: {schedule.cron!r}, next at {local:%H:%M} {zone}")

        await three_digests.wait()

        # Unique jobs: while one is pending or running, the same key stores nothing.
        first = await runner.submit("rebuild", "search", unique_key="rebuild:search")
        again = await runner.submit("rebuild", "search", unique_key="rebuild:search")
        print("same job:", again.id == first.id, "- deduplicated:", again.deduplicated)
        print(await again.wait())
        # Once it is final, the key is free again.
        later = await runner.submit("rebuild", "search", unique_key="rebuild:search")
        print("same job:", later.id == first.id, "- deduplicated:", later.deduplicated)
        await runner.stop()


if __name__ == "__main__":
    # A virtual clock: the ten-minute ticks pass at once (drop it to wait for real).
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
