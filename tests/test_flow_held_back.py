"""What holds a ready job back: ``held_back_jobs``/``held_back_types`` on every store,
``JobClient.held_back``, the CLI's ``show``/``list``/``stats``, and the dashboard's job page.

Claims are driven by hand, so no test waits on a clock: a rate window of an hour is
"full until the test ends".
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from dashboard_helpers import client_of
from test_cli import cli
from trio_jobs import (
    HeldBack,
    Job,
    JobClient,
    JobNotFoundError,
    JobRunner,
    JobTypeLimits,
    MemoryStorage,
    SQLiteStorage,
)
from trio_jobs.storage import held_back_jobs, held_back_types

W = "worker-1"


def new_job(job_type: str = "t", **fields: Any) -> Job[Any]:
    return Job(id=uuid.uuid4().hex, type=job_type, **fields)


async def saved(store: Any, *jobs: Job[Any]) -> list[Job[Any]]:
    for job in jobs:
        await store.save(job)
    return [await store.get(job.id) for job in jobs]


# -- the record ---------------------------------------------------------------------------


def test_held_back_reads_as_one_line() -> None:
    assert str(HeldBack("t", "paused")) == "paused"
    assert str(HeldBack("t", "max_running", 3, 3)) == "max_running 3 reached (3 running)"
    per_tenant = HeldBack("t", "max_running_per_tenant", 2, 2, tenant_id="acme")
    assert str(per_tenant) == "max_running_per_tenant 2 reached for tenant acme (2 running)"
    rate = HeldBack("t", "rate", 20, window=1.0, next_start_in=0.42)
    assert str(rate) == "rate 20 per 1 s (next start in 0.4 s)"
    assert str(HeldBack("t", "rate", 20, window=60.0)) == "rate 20 per 60 s"


# -- every store --------------------------------------------------------------------------


async def test_a_paused_type_holds_back_its_ready_jobs_only(store: Any) -> None:
    ready = await saved(store, new_job(), new_job(tenant_id="acme"), new_job())
    # A job whose delay has not passed waits for its time, not for a limit.
    await store.save(delayed := new_job(), delay=3600)
    jobs = [*ready, await store.get(delayed.id)]
    assert await held_back_jobs(store, jobs) == {}
    assert await held_back_types(store) == {}
    await store.set_paused("t", True)
    held = await held_back_jobs(store, jobs)
    assert held == {job.id: HeldBack("t", "paused") for job in jobs[:3]}
    assert await held_back_types(store) == {"t": HeldBack("t", "paused")}
    await store.set_paused("t", False)
    assert await held_back_jobs(store, jobs) == {}
    assert await held_back_types(store) == {}


async def test_max_running_holds_back_the_waiting_jobs_not_the_running_one(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", max_running=1))
    await saved(store, new_job(), new_job())
    (running,) = await store.claim(W, 10, ["t"])
    waiting = [j for j in await store.list_jobs(job_type="t") if j.id != running.id]
    held = await held_back_jobs(store, [running, *waiting])
    assert held == {waiting[0].id: HeldBack("t", "max_running", limit=1, running=1)}
    assert await held_back_types(store) == {"t": HeldBack("t", "max_running", 1, 1)}


async def test_a_tenant_at_its_cap_is_held_back_and_the_type_is_not(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", max_running_per_tenant=1))
    await saved(store, new_job(tenant_id="a"), new_job(tenant_id="a"), new_job(tenant_id="b"))
    await saved(store, new_job())  # no tenant
    claimed = await store.claim(W, 10, ["t"])
    assert sorted(j.tenant_id or "" for j in claimed) == ["", "a", "b"]
    waiting = [j for j in await store.list_jobs(job_type="t") if j.status.value == "pending"]
    assert [j.tenant_id for j in waiting] == ["a"]
    held = await held_back_jobs(store, waiting)
    assert held == {
        waiting[0].id: HeldBack("t", "max_running_per_tenant", 1, 1, tenant_id="a"),
    }
    assert await held_back_types(store) == {}


async def test_rate_holds_back_and_says_when_the_next_start_comes(store: Any) -> None:
    await store.set_limits(JobTypeLimits("t", rate=(1, 3600.0)))
    await saved(store, new_job(), new_job())
    (started,) = await store.claim(W, 10, ["t"])
    (waiting,) = [j for j in await store.list_jobs(job_type="t") if j.id != started.id]
    held = (await held_back_jobs(store, [waiting]))[waiting.id]
    assert (held.reason, held.limit, held.window) == ("rate", 1, 3600.0)
    assert held.next_start_in is not None
    assert 3000 < held.next_start_in <= 3600  # generous: the claim was just now
    assert str(held).startswith("rate 1 per 3600 s (next start in ")
    (by_type,) = (await held_back_types(store)).values()
    assert by_type.reason == "rate"


async def test_a_store_without_flow_control_holds_nothing_back() -> None:
    class Plain:
        """A store that keeps no flow settings (only what the functions may touch)."""

    job = new_job()
    assert await held_back_jobs(Plain(), [job]) == {}  # type: ignore[arg-type]
    assert await held_back_types(Plain()) == {}  # type: ignore[arg-type]


async def test_client_held_back_takes_a_job_or_its_id() -> None:
    store = MemoryStorage()
    async with JobClient(store) as client:
        handle = await client.submit("mail", {})
        assert await client.held_back(handle.id) is None
        await client.pause("mail")
        assert await client.held_back(handle.id) == HeldBack("mail", "paused")
        job = await client.get_job(handle.id)
        assert job is not None
        assert await client.held_back(job) == HeldBack("mail", "paused")
        assert await client.held_back_types() == {"mail": HeldBack("mail", "paused")}
        with pytest.raises(JobNotFoundError):
            await client.held_back("no-such-job")


async def test_runner_held_back_matches_the_client() -> None:
    async def send(job: Job[Any], ctx: Any) -> str:
        return "sent"

    async with JobRunner() as runner:
        runner.register_handler("mail", send)
        done = await runner.submit("mail", {})
        assert await done.wait() == "sent"
        assert await runner.held_back(done.id) is None
        await runner.pause("mail")
        handle = await runner.submit("mail", {})
        assert await runner.held_back(handle.id) == HeldBack("mail", "paused")
        assert await runner.held_back(done.id) is None  # finished: nothing to hold
        assert await runner.held_back_types() == {"mail": HeldBack("mail", "paused")}
        with pytest.raises(JobNotFoundError):
            await runner.held_back("no-such-job")
        await runner.stop(graceful=False)


# -- the dashboard ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_the_job_page_says_what_holds_the_job_back() -> None:
    store = MemoryStorage()
    await store.save(job := new_job("mail"))
    async with client_of(store) as client:
        assert 'id="held-back"' not in (await client.get(f"/jobs/{job.id}")).text
        await store.set_paused("mail", True)
        page = await client.get(f"/jobs/{job.id}")
    assert '<dd id="held-back">paused</dd>' in page.text


# -- the CLI ------------------------------------------------------------------------------

DB = ("--db", "jobs.db")


async def _claim_one(path: Path, job_type: str) -> Job[Any]:
    async with JobClient(SQLiteStorage(path)) as client:
        (job,) = await client.storage.claim(W, 1, [job_type])
    return job


async def test_show_list_and_stats_say_a_paused_job_is_held_back(tmp_path: Path) -> None:
    assert (await cli(*DB, "migrate", cwd=tmp_path)).code == 0
    first = (await cli(*DB, "submit", "mail", "{}", cwd=tmp_path)).stdout.strip()
    await cli(*DB, "submit", "mail", "{}", cwd=tmp_path)
    await cli(*DB, "submit", "sms", "{}", cwd=tmp_path)
    assert (await cli(*DB, "pause", "mail", cwd=tmp_path)).code == 0

    shown = await cli(*DB, "show", first, cwd=tmp_path)
    assert shown.code == 0, shown.stderr
    assert "held back:       paused" in shown.stdout.splitlines()
    as_json = (await cli(*DB, "show", first, "--json", cwd=tmp_path)).json()
    assert as_json["held_back"]["reason"] == "paused"
    assert as_json["held_back"]["text"] == "paused"
    assert as_json["id"] == first

    listed = await cli(*DB, "list", cwd=tmp_path)
    rows = [line.split() for line in listed.stdout.splitlines()[2:5]]  # under the headers
    assert [row[1:4] for row in rows] == [
        ["sms", "pending", "NORMAL"],
        ["mail", "pending", "(paused)"],
        ["mail", "pending", "(paused)"],
    ]
    jobs = (await cli(*DB, "list", "--json", cwd=tmp_path)).json()
    assert [(j["type"], (j["held_back"] or {}).get("reason")) for j in jobs] == [
        ("sms", None),
        ("mail", "paused"),
        ("mail", "paused"),
    ]

    stats = await cli(*DB, "stats", cwd=tmp_path)
    assert "held back:\n  mail: 2 pending, paused\n" in stats.stdout
    stats_json = (await cli(*DB, "stats", "--json", cwd=tmp_path)).json()
    assert {t: h["reason"] for t, h in stats_json["held_back"].items()} == {"mail": "paused"}

    assert (await cli(*DB, "resume", "mail", cwd=tmp_path)).code == 0
    assert (await cli(*DB, "show", first, "--json", cwd=tmp_path)).json()["held_back"] is None
    assert "held back" not in (await cli(*DB, "show", first, cwd=tmp_path)).stdout
    assert "(paused)" not in (await cli(*DB, "list", cwd=tmp_path)).stdout
    assert "held back" not in (await cli(*DB, "stats", cwd=tmp_path)).stdout
    assert (await cli(*DB, "stats", "--json", cwd=tmp_path)).json()["held_back"] == {}


async def test_show_and_stats_name_max_running_and_rate(tmp_path: Path) -> None:
    assert (await cli(*DB, "migrate", cwd=tmp_path)).code == 0
    assert (await cli(*DB, "limits", "mail", "--max-running", "1", cwd=tmp_path)).code == 0
    assert (await cli(*DB, "limits", "sms", "--rate", "1/3600", cwd=tmp_path)).code == 0
    ids = {}
    for job_type in ("mail", "mail", "sms", "sms"):
        ids[job_type] = (await cli(*DB, "submit", job_type, cwd=tmp_path)).stdout.strip()
    running = await _claim_one(tmp_path / "jobs.db", "mail")
    await _claim_one(tmp_path / "jobs.db", "sms")

    mail = await cli(*DB, "show", ids["mail"], cwd=tmp_path)
    assert "held back:       max_running 1 reached (1 running)" in mail.stdout.splitlines()
    assert "held back" not in (await cli(*DB, "show", running.id, cwd=tmp_path)).stdout
    sms = (await cli(*DB, "show", ids["sms"], "--json", cwd=tmp_path)).json()["held_back"]
    assert (sms["reason"], sms["limit"], sms["window"]) == ("rate", 1, 3600.0)
    assert 3000 < sms["next_start_in"] <= 3600
    assert sms["text"].startswith("rate 1 per 3600 s (next start in ")

    listed = (await cli(*DB, "list", cwd=tmp_path)).stdout
    assert listed.count("pending (max_running)") == 1
    assert listed.count("pending (rate)") == 1
    stats = (await cli(*DB, "stats", cwd=tmp_path)).stdout
    assert "  mail: 1 pending, max_running 1 reached (1 running)\n" in stats
    assert "  sms: 1 pending, rate 1 per 3600 s (next start in " in stats
