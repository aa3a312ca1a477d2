"""Tutorial step 6: events and progress."""

from __future__ import annotations

from typing import Any

import trio

from trio_jobs import Job, JobContext, JobRunner


async def import_rows(job: Job[int], ctx: JobContext[int]) -> int:
    rows = job.payload
    for done in range(1, rows + 1):
        await trio.sleep(0.1)  # import one row
        if done % 5 == 0:
            ctx.report_progress(100 * done / rows, f"{done}/{rows} rows")
    ctx.update_metadata({"rows_imported": rows})
    ctx.log.info("imported %d rows", rows)  # records carry job_id, job_type, attempt
    return rows


def on_progress(job: Job[Any]) -> None:
    # Fired by report_progress() (update_metadata() stores quietly, with no event).
    print(f"  progress {job.progress:.0f}% ({job.progress_message}), metadata {dict(job.metadata)}")


async def watch(runner: JobRunner, task_status: trio.TaskStatus[None]) -> None:
    """A task that consumes events from a channel, until the runner stops."""
    async with runner.subscribe() as events:
        task_status.started()
        async for event in events:
            if event.name == "job:completed":
                assert event.job is not None
                print(f"  [watcher] {event.job.type} completed: {event.result!r}")
    print("  [watcher] the runner stopped")


async def main() -> None:
    # The runner is inside the nursery: it stops first, which ends the watcher.
    async with trio.open_nursery() as nursery, JobRunner() as runner:
        runner.register_handler("import", import_rows)

        # Callbacks are called synchronously, with the seed's arguments.
        unsubscribe = runner.on("job:progress", on_progress)
        runner.on("job:started", lambda job: print(f"  started {job.type} #{job.attempts}"))
        await nursery.start(watch, runner)

        handle = await runner.submit("import", 10)
        await handle.wait()
        job = await handle.get_status()
        print("metadata:", dict(job.metadata))
        print("progress:", job.progress, job.progress_message)

        unsubscribe()  # no more progress lines
        await runner.submit("import", 5)


if __name__ == "__main__":
    trio.run(main)
