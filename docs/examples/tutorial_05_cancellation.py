"""Tutorial step 5: cancellation."""

from __future__ import annotations

import trio

from trio_jobs import Job, JobCancelledError, JobContext, JobRunner


async def main() -> None:
    async with JobRunner(concurrency=1) as runner:

        @runner.handler("export")
        async def export(job: Job[str], ctx: JobContext[str]) -> str:
            print(f"  {job.payload}: started")
            try:
                await trio.sleep(10)  # cancellation arrives at a checkpoint like this one
            except trio.Cancelled:
                print(f"  {job.payload}: cancelled, cleaning up")
                # Cleanup that must await runs shielded, as anywhere in Trio.
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.1)  # e.g. delete a half-written file
                raise  # never swallow Cancelled
            return f"{job.payload}.csv"

        running = await runner.submit("export", "big export")
        waiting = await runner.submit("export", "small export")  # queued: one slot
        await trio.sleep(1)

        # A job that waits for its turn is cancelled at once; it never starts.
        print("cancel the queued job:", await waiting.cancel())
        # A running job has its attempt's cancel scope cancelled.
        print("cancel the running job:", await running.cancel())
        try:
            await running.wait()
        except JobCancelledError:
            print("  wait() raised JobCancelledError")
        print("  status:", (await running.get_status()).status)
        # Cancelling a finished job changes nothing.
        print("cancel it again:", await running.cancel())

        # Giving up on *waiting* is not cancelling the job: it runs on.
        handle = await runner.submit("export", "patient export")
        with trio.move_on_after(1):
            await handle.wait()
        print("stopped waiting after 1 s; done?", await handle.is_done())
        print("  cancel it too:", await handle.cancel())


if __name__ == "__main__":
    trio.run(main)
