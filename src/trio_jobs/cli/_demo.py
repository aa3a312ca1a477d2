"""``trio-jobs demo``: a short live tour of what the runner does, for a newcomer's first command.

A :class:`JobRunner` with three slots runs a realistic mix of jobs on the chosen
store (a fresh temporary SQLite file by default): e-mails of different
priorities (a CRITICAL one submitted late overtakes the LOW newsletter), an
image resize that reports progress, a flaky API call that fails twice and
succeeds on its third attempt after backoff, a report that times out once and
one that always does, a declined card payment that is not worth retrying, and a
long import cancelled midway. Every event is printed as it happens; a summary
table and the store's statistics close the tour. It takes about five seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections import Counter
from typing import Any, TextIO

import trio

from .._context import JobContext
from .._records import Job, JobPriority, JobStatus, utcnow
from .._retry import RetryConfig
from .._runner import JobRunner
from ..storage._base import JobStorage
from ._format import format_seconds, one_line, render_table

#: Slots of the demo's runner: few, so that a queue forms and priorities show.
CONCURRENCY = 3

_COLORS = {
    "submitted": "2",
    "started": "36",
    "progress": "2",
    "completed": "32",
    "retrying": "33",
    "timeout": "33",
    "failed": "31",
    "cancelled": "35",
    "note": "1",
}

_EXPLANATION = """\
  send-email       quick; a password reset is CRITICAL, the newsletter is LOW
  resize-image     reports its progress as it goes
  call-flaky-api   fails twice with ConnectionError, then succeeds: retried with backoff
  generate-report  the quarterly one times out once, the annual one every time
  charge-card      the card is declined: not a retryable error, so it fails at once
  import-dataset   a long job, cancelled midway by the demo"""


# -- the handlers -----------------------------------------------------------------------


async def send_email(job: Job[Any], ctx: JobContext[Any]) -> dict[str, str]:
    """Pretend to send an e-mail."""
    await trio.sleep(0.35)
    return {"to": job.payload["to"], "message_id": f"<{job.id[:8]}@mail>"}


async def resize_image(job: Job[Any], ctx: JobContext[Any]) -> dict[str, Any]:
    """Resize an image in four steps, reporting progress after each."""
    width, height = job.payload["size"]
    for step in range(1, 5):
        await trio.sleep(0.25)
        ctx.report_progress(step * 25, f"{width * step // 4}x{height * step // 4}")
    return {"thumbnail": job.payload["file"].replace(".jpg", "-small.jpg")}


async def call_flaky_api(job: Job[Any], ctx: JobContext[Any]) -> dict[str, Any]:
    """Fail the first two attempts the way a flaky network does; succeed on the third."""
    await trio.sleep(0.15)
    if ctx.attempt < 3:
        raise ConnectionError("connection reset by payments.example.com")
    return {"status": 200, "charged": job.payload["amount"]}


async def generate_report(job: Job[Any], ctx: JobContext[Any]) -> dict[str, Any]:
    """Take longer than the job's timeout allows on the attempts listed as slow."""
    slow = ctx.attempt in job.payload["slow_attempts"]
    await trio.sleep(2.0 if slow else 0.3)
    return {"pages": job.payload["pages"]}


async def charge_card(job: Job[Any], ctx: JobContext[Any]) -> None:
    """Fail with an error whose message says retrying is pointless."""
    await trio.sleep(0.1)
    raise ValueError("card declined: invalid input (CVC check failed)")


async def import_dataset(job: Job[Any], ctx: JobContext[Any]) -> int:
    """A long job that reports progress; the demo cancels it before it finishes."""
    rows = job.payload["rows"]
    for step in range(1, 11):
        await trio.sleep(0.25)
        ctx.report_progress(step * 10, f"{rows * step // 10:,} rows")
    return int(rows)


HANDLERS = {
    "send-email": send_email,
    "resize-image": resize_image,
    "call-flaky-api": call_flaky_api,
    "generate-report": generate_report,
    "charge-card": charge_card,
    "import-dataset": import_dataset,
}


# -- printing ---------------------------------------------------------------------------


class _Printer:
    """Prints one aligned line per event, with the seconds since the demo started."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start = trio.current_time()
        self.color = out.isatty() and "NO_COLOR" not in os.environ

    def elapsed(self) -> float:
        return trio.current_time() - self.start

    def paint(self, text: str, kind: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{_COLORS[kind]}m{text}\x1b[0m"

    def event(self, kind: str, job: Job[Any], detail: str = "") -> None:
        line = (
            f"{self.elapsed():6.2f}s  {self.paint(kind.ljust(9), kind)}  {job.type:<15}"
            f"  {JobPriority(job.priority).name:<8}  {job.id[:8]}"
        )
        self.out.write(f"{line}  {detail}".rstrip() + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(f"{self.elapsed():6.2f}s  {self.paint(text, 'note')}\n")
        self.out.flush()


def _progress_bar(progress: float) -> str:
    filled = round(progress / 10)
    return "[" + "#" * filled + "." * (10 - filled) + f"] {progress:3.0f}%"


def _error_text(job: Job[Any]) -> str:
    error = job.last_error
    if error is None:
        return ""
    name = error.type.rpartition(".")[2]
    if name == "JobTimeoutError":
        return f"{name}: ran over {format_seconds(job.timeout)}"
    return f"{name}: {error.message}"


def _outcome(job: Job[Any]) -> str:
    if job.status is JobStatus.COMPLETED:
        return one_line(json.dumps(job.result), 64)
    if job.status is JobStatus.CANCELLED:
        if job.progress is None:
            return "cancelled"
        return f"cancelled at {job.progress:.0f}% ({job.progress_message})"
    return one_line(_error_text(job), 60)


def _attach(runner: JobRunner, show: _Printer, progressed: dict[str, trio.Event]) -> None:
    def attempt(job: Job[Any]) -> str:
        return f"attempt {job.attempts}/{job.max_attempts}"

    def on_progress(job: Job[Any]) -> None:
        show.event("progress", job, f"{_progress_bar(job.progress or 0)}  {job.progress_message}")
        if (event := progressed.get(job.id)) is not None and (job.progress or 0) >= 50:
            event.set()

    def on_retrying(job: Job[Any], number: int, delay: float) -> None:
        show.event(
            "retrying",
            job,
            f"attempt {number}/{job.max_attempts} failed ({one_line(_error_text(job), 60)});"
            f" next in {format_seconds(delay)}",
        )

    def on_failed(job: Job[Any], error: BaseException) -> None:
        retry = "not retryable" if job.attempts < job.max_attempts else "no attempts left"
        show.event("failed", job, f"{type(error).__name__}: {error} ({retry})")

    def on_timeout(job: Job[Any]) -> None:
        final = " (no attempts left)" if job.attempts >= job.max_attempts else ""
        show.event("timeout", job, f"{attempt(job)} ran over {format_seconds(job.timeout)}{final}")

    runner.on("job:submitted", lambda job: show.event("submitted", job))
    runner.on("job:started", lambda job: show.event("started", job, attempt(job)))
    runner.on("job:progress", on_progress)
    runner.on(
        "job:completed",
        lambda job, result: show.event(
            "completed",
            job,
            f"in {format_seconds(job.execution_time)} -> {one_line(json.dumps(result), 50)}",
        ),
    )
    runner.on("job:retrying", on_retrying)
    runner.on("job:failed", on_failed)
    runner.on("job:timeout", on_timeout)
    runner.on(
        "job:cancelled",
        lambda job: show.event(
            "cancelled", job, "" if job.progress is None else f"at {job.progress:.0f}%"
        ),
    )


# -- the tour ---------------------------------------------------------------------------


async def run_demo(storage: JobStorage, *, where: str, out: TextIO | None = None) -> None:
    """Run the demo on ``storage`` (opened and closed here), printing to ``out``.

    Args:
        storage: The store to use; a fresh one, since the summary counts its jobs.
        where: How to name the store in the heading.
        out: Where to print (standard output by default).
    """
    out = out or sys.stdout
    out.write(
        f"trio_jobs demo: a JobRunner with {CONCURRENCY} slots on the {where}\n\n"
        f"{_EXPLANATION}\n\nEvents as they happen (seconds since the start):\n\n"
    )
    show = _Printer(out)
    started = utcnow()
    progressed: dict[str, trio.Event] = {}
    runner = JobRunner(
        concurrency=CONCURRENCY,
        poll_interval=0.1,
        default_timeout=10.0,
        default_retry=RetryConfig(max_attempts=3, base_delay=0.2, max_delay=2.0, jitter=False),
        storage=storage,
    )
    for job_type, handler in HANDLERS.items():
        runner.register_handler(job_type, handler)
    _attach(runner, show, progressed)
    async with runner:
        submit = runner.submit
        ids = []
        dataset = await submit("import-dataset", {"rows": 2_000_000})
        progressed[dataset.id] = trio.Event()
        ids.append(dataset.id)
        flaky = await submit(
            "call-flaky-api", {"amount": 42}, priority=JobPriority.HIGH, retry={"max_attempts": 4}
        )
        ids.append(flaky.id)
        image = await submit("resize-image", {"file": "cat.jpg", "size": [4032, 3024]})
        ids.append(image.id)
        for name in ("ada", "grace", "alan", "edsger"):
            handle = await submit(
                "send-email",
                {"to": f"{name}@example.com", "template": "newsletter"},
                priority=JobPriority.LOW,
            )
            ids.append(handle.id)
        quarterly = await submit(
            "generate-report", {"pages": 12, "slow_attempts": [1]}, timeout=0.6
        )
        ids.append(quarterly.id)
        annual = await submit(
            "generate-report",
            {"pages": 80, "slow_attempts": [1, 2]},
            priority=JobPriority.LOW,
            timeout=0.6,
            retry={"max_attempts": 2},
        )
        ids.append(annual.id)
        card = await submit("charge-card", {"card": "4000 0000 0000 0002"})
        ids.append(card.id)

        await trio.sleep(0.3)
        show.note("a CRITICAL job arrives: it overtakes every job still waiting")
        urgent = await submit(
            "send-email",
            {"to": "ada@example.com", "template": "password-reset"},
            priority=JobPriority.CRITICAL,
        )
        ids.append(urgent.id)

        await progressed[dataset.id].wait()
        show.note(f"half-way through: cancelling import-dataset {dataset.id[:8]}")
        await dataset.cancel()

        await runner.join()
        jobs = [job for job_id in ids if (job := await runner.get_job(job_id)) is not None]
        took = show.elapsed()

    out.write("\nSummary, in order of submission (RAN: the last attempt):\n\n")
    headers = ("JOB", "TYPE", "PRIORITY", "STATUS", "ATTEMPTS", "RAN", "DONE AT", "OUTCOME")
    rows = [
        (
            job.id[:8],
            job.type,
            JobPriority(job.priority).name,
            show.paint(job.status.value.ljust(9), _status_color(job.status)),
            f"{job.attempts}/{job.max_attempts}",
            format_seconds(job.execution_time),
            "-"
            if job.completed_at is None
            else f"{(job.completed_at - started).total_seconds():.2f}s",
            _outcome(job),
        )
        for job in jobs
    ]
    out.write(render_table(headers, rows, right=("ATTEMPTS", "RAN", "DONE AT")) + "\n\n")
    # Counted from the demo's own jobs: a --db file may hold others.
    count = Counter(job.status for job in jobs)
    retries = sum(max(job.attempts - 1, 0) for job in jobs)
    runs = [job.execution_time for job in jobs if job.status is JobStatus.COMPLETED]
    average = statistics.fmean(t for t in runs if t is not None) if runs else None
    out.write(
        f"Stats: {count[JobStatus.COMPLETED]} completed, {count[JobStatus.FAILED]} failed,"
        f" {count[JobStatus.TIMEOUT]} timed out, {count[JobStatus.CANCELLED]} cancelled;"
        f" {retries} retries; average run of completed jobs {format_seconds(average)};"
        f" the whole demo took {format_seconds(took)}.\n\n"
        "Next: a durable queue of your own. Put handlers in a module (see"
        " `trio-jobs worker --help`), then:\n"
        "  trio-jobs worker myapp:HANDLERS            # runs jobs until Ctrl-C\n"
        '  trio-jobs submit send-email \'{"to": "ada@example.com"}\'\n'
        "  trio-jobs list\n"
    )
    out.flush()


def _status_color(status: JobStatus) -> str:
    return {
        JobStatus.COMPLETED: "completed",
        JobStatus.FAILED: "failed",
        JobStatus.TIMEOUT: "timeout",
        JobStatus.CANCELLED: "cancelled",
    }.get(status, "note")
