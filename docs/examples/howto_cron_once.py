"""How-to: a cron job that every worker declares and the store runs once per tick.

Start any number of workers on one store with ``trio-jobs worker howto_cron_once:setup``.
"""

from __future__ import annotations

from trio_jobs import Job, JobContext, JobRunner

sent: list[str] = []  # stands in for the mail server


async def send_report(job: Job[None], ctx: JobContext[None]) -> None:
    tick = job.metadata["scheduled_for"]  # the tick, ISO 8601 UTC
    sent.append(tick)  # build and send the report for this tick, keyed on it


def setup(runner: JobRunner) -> None:
    runner.register_handler("send_report", send_report)
    runner.add_schedule(
        "send_report",
        cron="0 9 * * 1-5",  # 09:00, Monday to Friday...
        timezone="Europe/Paris",  # ...in Paris, summer and winter
        key="daily-report",
        backfill=3600,  # a worker that starts by 10:00 still sends it
    )
