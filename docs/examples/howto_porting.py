"""A Celery-style plain ``def`` task as a trio_jobs handler, with the job in every log line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import trio

import trio_jobs
from trio_jobs import Job, JobContext, JobRunner

log = logging.getLogger("thumbnails")


def make_thumbnail(path: str, width: int) -> str:
    """Blocking work, as in the original task (an image library, say)."""
    log.info("resizing %s", path)
    return f"{path.removesuffix('.png')}-{width}.png"


def resize(job: Job[Any], ctx: JobContext[Any]) -> str:
    """The task, unchanged but for its arguments: it runs in a worker thread."""
    return make_thumbnail(job.payload["path"], job.payload["width"])


def export(job: Job[Any], ctx: JobContext[Any]) -> int:
    """A long task checks ``ctx.cancelled`` between steps, like a soft time limit."""
    written = 0
    for n, chunk in enumerate(job.payload["chunks"]):
        if ctx.cancelled:
            break  # the job ends TIMEOUT or CANCELLED anyway
        written += len(chunk)
        ctx.report_progress(100 * (n + 1) / len(job.payload["chunks"]))
    return written


async def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(trio_jobs.JobLogFilter())
    handler.setFormatter(logging.Formatter("%(job_type)s #%(attempt)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        async with JobRunner(middleware=[trio_jobs.log_context]) as runner:
            runner.register_handler("resize", resize)
            runner.register_handler("export", export)
            thumb = await runner.submit(
                "resize",
                {"path": "cat.png", "width": 200},
                retry={"max_attempts": 6, "base_delay": 10},
            )
            print(await thumb.wait())
            dump = await runner.submit("export", {"chunks": ["abc", "de", "f"]}, timeout=60)
            print(await dump.wait())
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    trio.run(main)
