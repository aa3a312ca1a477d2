"""Tutorial step 8: the handlers module that workers load.

``trio-jobs worker tutorial_08_handlers:HANDLERS`` imports this module and runs
its handlers; your own code can register them on a runner with ``setup(runner)``.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from trio_jobs import Job, JobContext, JobRunner

Payload = dict[str, Any]


async def resize(job: Job[Payload], ctx: JobContext[Payload]) -> Payload:
    """Pretend to resize an image; payload and result are JSON objects."""
    image, width = job.payload["image"], job.payload["width"]
    ctx.log.info("resizing %s to %d px", image, width)
    await trio.sleep(0.5)  # the real work
    ctx.report_progress(100, "resized")
    stem = image.rsplit(".", 1)[0]
    return {"path": f"{stem}-{width}.png", "worker_pid": os.getpid()}


async def send_email(job: Job[Payload], ctx: JobContext[Payload]) -> bool:
    """Pretend to send an email."""
    ctx.log.info("sending to %s", job.payload["to"])
    await trio.sleep(0.2)
    return True


# What `trio-jobs worker tutorial_08_handlers:HANDLERS` runs.
HANDLERS = {"resize": resize, "send-email": send_email}


def setup(runner: JobRunner) -> None:
    """Register every handler on ``runner`` (``trio-jobs worker tutorial_08_handlers:setup``)."""
    for job_type, handler in HANDLERS.items():
        runner.register_handler(job_type, handler)
