"""The library in one screen."""

from __future__ import annotations

from typing import Any

import trio

from trio_jobs import Job, JobContext, JobPriority, JobRunner


async def main() -> None:
    async with JobRunner(concurrency=10, default_timeout=60.0) as runner:

        @runner.handler("send-email")
        async def send_email(job: Job[dict[str, Any]], ctx: JobContext[dict[str, Any]]) -> bool:
            ctx.log.info("sending to %s", job.payload["to"])
            await trio.sleep(0.1)  # your I/O here
            return True

        handle = await runner.submit(
            "send-email",
            {"to": "ada@example.com"},
            priority=JobPriority.HIGH,
            retry={"max_attempts": 5},  # 5 attempts, exponential backoff with jitter
        )
        print("sent:", await handle.wait())
    # Leaving the block waits for every job to finish, like a nursery.


if __name__ == "__main__":
    trio.run(main)
