"""Regenerate the dashboard screenshots in docs/_static (Playwright + Debian's chromium).

    .venv/bin/python docs/screenshots.py

A memory store with a few job types runs for a while (successes, retries, a
failure with a traceback, a job in progress), then the overview and a job page
are photographed at 1280 pixels wide.
"""

from __future__ import annotations

import math
import random
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dashboard_helpers import served
from trio_jobs import Job, JobRunner, JobStatus, MemoryStorage, RetryConfig
from trio_jobs._records import utcnow

STATIC = Path(__file__).resolve().parent / "_static"
CHROMIUM = "/usr/bin/chromium"


class SmtpRefused(Exception):
    pass


async def send_email(job: Any, ctx: Any) -> dict[str, str]:
    await trio.sleep(random.uniform(0.01, 0.08))
    if job.payload["to"].endswith("@bounce.example"):
        raise SmtpRefused(f"550 5.1.1 <{job.payload['to']}>: mailbox unavailable")
    return {"message_id": f"<{job.id[:12]}@mail.example>"}


async def resize_image(job: Any, ctx: Any) -> dict[str, int]:
    for step in range(4):
        ctx.report_progress(25 * step, f"pass {step + 1} of 4")
        await trio.sleep(random.uniform(0.01, 0.05))
    return {"width": 640, "height": 480}


async def sync_crm(job: Any, ctx: Any) -> str:
    await trio.sleep(random.uniform(0.02, 0.1))
    if random.random() < 0.25:
        raise ConnectionError("crm.example: connection reset by peer")
    return "synced"


async def render_report(job: Any, ctx: Any) -> None:
    ctx.report_progress(62.5, "rendering page 5 of 8")
    await trio.sleep(3600)


async def history(store: MemoryStorage) -> None:
    """An hour of finished jobs, so the throughput chart has something to show."""
    now = utcnow()
    rng = random.Random(15)
    for minute in range(60, 0, -1):
        busy = 30 + 25 * math.sin(minute / 9) + rng.randint(0, 12)
        for i in range(int(busy)):
            failed = rng.random() < 0.04 + (0.2 if 22 <= minute <= 25 else 0)
            done = now - timedelta(minutes=minute, seconds=rng.uniform(0, 59))
            await store.update(
                Job(
                    id=f"hist-{minute}-{i}",
                    type=rng.choice(["send-email", "send-email", "resize-image", "sync-crm"]),
                    status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
                    attempts=1,
                    created_at=done - timedelta(seconds=2),
                    started_at=done - timedelta(seconds=1),
                    completed_at=done,
                    execution_time=1.0,
                )
            )


async def populate(store: MemoryStorage, runner: JobRunner) -> str:
    await history(store)
    retry = RetryConfig(max_attempts=2, base_delay=0.01, jitter=False)
    failed = ""
    for i in range(120):
        await runner.submit("send-email", {"to": f"user{i}@example.com", "template": "welcome"})
        if i % 3 == 0:
            await runner.submit("resize-image", {"key": f"uploads/{i}.png"})
        if i % 4 == 0:
            await runner.submit("sync-crm", {"account": i}, retry=retry, tenant_id="acme")
        await trio.sleep(0.01)
    handle = await runner.submit(
        "send-email",
        {"to": "ada@bounce.example", "template": "invoice", "invoice": 1042},
        retry=RetryConfig(max_attempts=1),
        metadata={"request_id": "req-7f3a"},
    )
    failed = handle.id
    for i in range(3):
        await runner.submit("render-report", {"month": f"2026-0{i + 1}"})
    with trio.move_on_after(10):
        while True:
            job = await store.get(failed)
            if job is not None and job.status.is_final:
                break
            await store.wait_for_change(failed, 1.0)
    return failed


def main() -> None:
    from playwright.sync_api import sync_playwright

    store = MemoryStorage()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve_main() -> None:
        runner = JobRunner(storage=store, concurrency=8, poll_interval=0.05)
        for name, handler in [
            ("send-email", send_email),
            ("resize-image", resize_image),
            ("sync-crm", sync_crm),
            ("render-report", render_report),
        ]:
            runner.register_handler(name, handler)
        async with runner, served(store) as url:
            state["failed"] = await populate(store, runner)
            # A backlog no worker here handles: it waits, and ages.
            for i in range(40):
                await store.save(
                    Job(
                        id=f"export-{i:04d}",
                        type="export-csv",
                        payload={"table": "orders", "part": i},
                        created_at=utcnow() - timedelta(seconds=95 - i),
                        tenant_id="acme" if i % 2 else "globex",
                    )
                )
            state["url"] = url
            state["stop"] = trio.Event()
            state["token"] = trio.lowlevel.current_trio_token()
            ready.set()
            await state["stop"].wait()
            await runner.stop(False)  # the reports never finish: cancel them

    thread = threading.Thread(target=trio.run, args=(serve_main,), daemon=True)
    thread.start()
    assert ready.wait(120)
    url = state["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(url + "/")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(STATIC / "dashboard-overview.png"), full_page=True)
        page.goto(f"{url}/jobs/{state['failed']}")
        page.screenshot(path=str(STATIC / "dashboard-job.png"), full_page=True)
        page.goto(f"{url}/jobs?type=send-email")
        page.screenshot(path=str(STATIC / "dashboard-jobs.png"))
        browser.close()
    trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
    thread.join(30)


if __name__ == "__main__":
    main()
