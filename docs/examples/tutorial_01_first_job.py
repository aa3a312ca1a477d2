"""Tutorial step 1: a first job.

Run it with ``python tutorial_01_first_job.py``.
"""

from __future__ import annotations

import trio

from trio_jobs import Job, JobContext, JobRunner


# A handler is an async function of the job and its context. What it returns is
# the job's result.
async def add(job: Job[dict[str, int]], ctx: JobContext[dict[str, int]]) -> int:
    await trio.sleep(0.1)  # stands for real work: a request, a query, a file...
    return job.payload["a"] + job.payload["b"]


async def main() -> None:
    async with JobRunner() as runner:
        runner.register_handler("add", add)

        # The decorator form registers the function it decorates.
        @runner.handler("greet")
        async def greet(job: Job[str], ctx: JobContext[str]) -> str:
            return f"hello, {job.payload}"

        handle = await runner.submit("add", {"a": 2, "b": 3})
        print("submitted job of type", handle.type)
        print("2 + 3 =", await handle.wait())

        snapshot = await handle.get_status()
        print("status:", snapshot.status, "after", snapshot.attempts, "attempt")

        # Submit a job and do not wait for it: leaving the block will.
        greeting = await runner.submit("greet", "world")
    # Like a nursery, the block ends only when every job it started is finished.
    print("the runner drained and stopped")
    # Handles still read the store after the runner stopped.
    print(await greeting.wait())


if __name__ == "__main__":
    trio.run(main)
