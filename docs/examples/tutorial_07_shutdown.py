"""Tutorial step 7: graceful shutdown, forced shutdown, and errors in the block."""

from __future__ import annotations

import trio

from trio_jobs import Job, JobContext, JobRunner, MemoryStorage, RunnerStoppedError


async def slow(job: Job[str], ctx: JobContext[str]) -> str:
    try:
        await trio.sleep(1)
    except trio.Cancelled:
        print(f"  {job.payload}: interrupted")
        raise
    print(f"  {job.payload}: finished")
    return job.payload


async def status_of(store: MemoryStorage, job_id: str) -> str:
    job = await store.get(job_id)
    assert job is not None
    return f"{job.status}, attempts={job.attempts}"


async def crash(store: MemoryStorage) -> None:
    async with JobRunner(storage=store) as runner:
        runner.register_handler("slow", slow)
        await runner.submit("slow", "c")
        await trio.sleep(0.5)
        raise KeyError("oops")  # running jobs are cancelled, back to PENDING


async def main() -> None:
    # One store shared by two runners in turn: what the first leaves, the second runs.
    store = MemoryStorage()

    print("graceful stop:")
    async with JobRunner(concurrency=1, storage=store) as runner:
        runner.register_handler("slow", slow)
        first = await runner.submit("slow", "a")
        second = await runner.submit("slow", "b")  # queued behind "a"
        await trio.sleep(0.5)
        # Start nothing new and let the running attempt finish.
        await runner.stop()
        try:
            await second.wait()
        except RunnerStoppedError:
            print("  waiting on b: RunnerStoppedError")
    print("  a is", await status_of(store, first.id))
    print("  b is", await status_of(store, second.id))

    print("forced stop:")
    async with JobRunner(concurrency=1, storage=store) as runner:
        runner.register_handler("slow", slow)  # b starts as soon as this runs
        await trio.sleep(0.5)
        # Cancel running attempts now; they go back to PENDING, uncounted.
        await runner.stop(graceful=False)
    print("  b is", await status_of(store, second.id))

    print("a third runner drains what is left:")
    async with JobRunner(concurrency=1, storage=store) as runner:
        runner.register_handler("slow", slow)
    print("  b is", await status_of(store, second.id))

    print("an exception in the block:")
    try:
        await crash(store)
    except KeyError as exc:  # the very exception, not an ExceptionGroup
        print("  caught", repr(exc))


if __name__ == "__main__":
    trio.run(main)
