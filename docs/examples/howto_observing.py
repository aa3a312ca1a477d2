"""How-to: observe jobs through logs, callbacks, an event channel and stats."""

from __future__ import annotations

import logging
import sys
from collections import Counter

import trio

from trio_jobs import Job, JobContext, JobRunner, RetryConfig


class JobFields(logging.Filter):
    """Give every record job fields, empty for records logged outside a job."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("job_id", "job_type", "attempt"):
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


def configure_logging(stream: object = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    handler.addFilter(JobFields())
    # ctx.log prefixes messages with "[type id #attempt]"; the same fields are on
    # each record as extras, for structured logging (JSON, Loki, ...).
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)s %(name)s job_type=%(job_type)s attempt=%(attempt)s: %(message)s"
        )
    )
    logger = logging.getLogger("trio_jobs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


async def sync(job: Job[str], ctx: JobContext[str]) -> str:
    ctx.log.info("syncing %s", job.payload)
    await trio.sleep(0.1)
    if ctx.attempt == 1:
        raise ConnectionError("connection reset")
    return "ok"


async def metrics(
    runner: JobRunner, counts: Counter[str], task_status: trio.TaskStatus[None]
) -> None:
    """Count events, as a metrics exporter would, from a task of its own."""
    async with runner.subscribe(max_buffer_size=1000) as events:
        task_status.started()
        async for event in events:
            counts[event.name] += 1


async def main() -> None:
    handler = configure_logging()
    try:
        counts: Counter[str] = Counter()
        async with trio.open_nursery() as nursery:
            policy = RetryConfig(base_delay=0.5, jitter=False)
            async with JobRunner(default_retry=policy) as runner:
                runner.register_handler("sync", sync)
                await nursery.start(metrics, runner, counts)
                runner.on("job:failed", lambda job, error: print("ALERT:", job.id, error))
                await runner.submit("sync", "accounts")
                await runner.join()  # wait for every job, without leaving the block
                stats = await runner.stats()
                print(
                    f"stats: {stats.completed} completed, {stats.failed} failed, "
                    f"mean time {stats.average_execution_time:.1f}s"
                )
        print("events:", dict(sorted(counts.items())))
    finally:
        logging.getLogger("trio_jobs").removeHandler(handler)


if __name__ == "__main__":
    trio.run(main)
