"""Tutorial step 2: priorities and bounded concurrency."""

from __future__ import annotations

import trio

from trio_jobs import Job, JobContext, JobPriority, JobRunner


async def main() -> None:
    order: list[str] = []

    # One job at a time, so that the others have to queue.
    async with JobRunner(concurrency=1) as runner:

        @runner.handler("work")
        async def work(job: Job[str], ctx: JobContext[str]) -> None:
            await trio.sleep(0.2)
            order.append(job.payload)

        # A slot is free: this one starts at once and holds it for 0.2 s.
        await runner.submit("work", "first")
        # These queue up behind it, submitted from the least to the most urgent.
        await runner.submit("work", "low", priority=JobPriority.LOW)
        await runner.submit("work", "normal 1")  # NORMAL is the default
        await runner.submit("work", "high", priority=JobPriority.HIGH)
        await runner.submit("work", "normal 2")
        await runner.submit("work", "critical", priority=JobPriority.CRITICAL)

        stats = await runner.stats()
        print(f"running: {stats.running}, waiting: {stats.pending}")

    # Highest priority first; FIFO within a priority.
    print("ran in this order:", ", ".join(order))


if __name__ == "__main__":
    trio.run(main)
