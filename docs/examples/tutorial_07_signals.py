"""Tutorial step 7, continued: stop on SIGINT/SIGTERM, gracefully first, then by force.

Run it, then press Ctrl-C once (running jobs finish), or twice (they are cancelled).
"""

from __future__ import annotations

import itertools
import signal

import trio

from trio_jobs import Job, JobContext, JobRunner


async def tick(job: Job[int], ctx: JobContext[int]) -> int:
    await trio.sleep(2)
    return job.payload


async def produce(runner: JobRunner) -> None:
    """Stands for your program's real work: it submits a job every half second."""
    for n in itertools.count():
        await runner.submit("tick", n)
        await trio.sleep(0.5)


async def main(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with JobRunner() as runner, trio.open_nursery() as nursery:
            runner.register_handler("tick", tick)
            producing = trio.CancelScope()

            async def run_producer() -> None:
                with producing:
                    await produce(runner)

            async def stop(graceful: bool) -> None:
                producing.cancel()  # submit nothing more: a stopped runner refuses it
                await runner.stop(graceful)
                nursery.cancel_scope.cancel()  # ends the signal loop below

            nursery.start_soon(run_producer)
            print("running; press Ctrl-C to stop")
            task_status.started()
            received = 0
            async for signum in signals:
                received += 1
                name = signal.Signals(signum).name
                if received == 1:
                    print(f"{name}: letting running jobs finish (send it again to force)")
                    nursery.start_soon(stop, True)
                else:
                    print(f"{name}: cancelling running jobs; they stay pending")
                    nursery.start_soon(stop, False)
        stats = await runner.stats()
        print(f"stopped: {stats.completed} completed, {stats.pending} left pending")


if __name__ == "__main__":
    trio.run(main)
