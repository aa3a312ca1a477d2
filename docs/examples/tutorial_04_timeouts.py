"""Tutorial step 4: timeouts."""

from __future__ import annotations

import math

import trio

from trio_jobs import Job, JobContext, JobRunner, JobTimeoutError


async def main() -> None:
    # Every attempt gets at most 60 s unless its job says otherwise.
    async with JobRunner(default_timeout=60.0) as runner:
        start = trio.current_time()

        def now() -> str:
            return f"t={trio.current_time() - start:.1f}s"

        @runner.handler("report")
        async def report(job: Job[float], ctx: JobContext[float]) -> str:
            # The attempt runs in a cancel scope whose deadline is its timeout.
            if ctx.deadline < math.inf:
                print(
                    f"  attempt {ctx.attempt} at {now()}, must end by {ctx.deadline - start:.1f}s"
                )
            else:
                print(f"  attempt {ctx.attempt} at {now()}, no deadline")
            try:
                await trio.sleep(job.payload)  # the slow part
            finally:
                if ctx.cancelled:
                    print(f"  attempt {ctx.attempt} cut off at {now()}")
            return "report ready"

        print("a fast report:")
        handle = await runner.submit("report", 0.5, timeout=2.0)
        print("  result:", await handle.wait())

        print("a slow report, two attempts of 2 s each:")
        start = trio.current_time()
        handle = await runner.submit(
            "report",
            10.0,
            timeout=2.0,
            retry={"max_attempts": 2, "base_delay": 1.0, "jitter": False},
        )
        try:
            await handle.wait()
        except JobTimeoutError as exc:
            # JobTimeoutError is also a TimeoutError.
            print("  gave up:", type(exc).__name__, isinstance(exc, TimeoutError))
        job = await handle.get_status()
        print("  status:", job.status, "after", job.attempts, "attempts")

        print("no limit at all:")
        start = trio.current_time()
        handle = await runner.submit("report", 0.5, timeout=math.inf)
        print("  result:", await handle.wait())


if __name__ == "__main__":
    trio.run(main)
