"""The flow-control commands: pause, resume, limits, tenant-weight."""

from __future__ import annotations

from pathlib import Path

from test_cli import cli
from trio_jobs import JobClient, JobTypeLimits, SQLiteStorage


async def test_limits_pause_resume_and_tenant_weight_commands(tmp_path: Path) -> None:
    db = ("--db", "jobs.db")
    assert (await cli(*db, "migrate", cwd=tmp_path)).code == 0
    done = await cli(
        *db, "limits", "mail", "--max-running", "3", "--rate", "20/1", "--fair", cwd=tmp_path
    )
    assert done.code == 0, done.stderr
    assert (await cli(*db, "pause", "mail", cwd=tmp_path)).code == 0
    shown = await cli(*db, "limits", "--json", cwd=tmp_path)
    assert shown.json() == [
        {
            "job_type": "mail",
            "max_running": 3,
            "max_running_per_tenant": None,
            "rate": [20, 1.0],
            "fair_tenants": True,
            "paused": True,
            "running": 0,
            "starts_in_window": 0,
            "held_back_by": "paused",
        }
    ]
    # Options not given keep their values.
    assert (await cli(*db, "limits", "mail", "--no-fair", cwd=tmp_path)).code == 0
    assert (await cli(*db, "resume", "mail", cwd=tmp_path)).code == 0
    assert (await cli(*db, "tenant-weight", "acme", "2.5", cwd=tmp_path)).code == 0
    async with JobClient(SQLiteStorage(tmp_path / "jobs.db")) as client:
        assert await client.get_limits("mail") == JobTypeLimits(
            "mail", max_running=3, rate=(20, 1.0)
        )


async def test_limits_rejects_bad_values(tmp_path: Path) -> None:
    db = ("--db", "jobs.db")
    for args in (("--rate", "5"), ("--max-running", "0"), ("--rate", "5/0")):
        done = await cli(*db, "limits", "mail", *args, cwd=tmp_path)
        assert done.code == 2
        assert "limits" in done.stderr
    weight = await cli(*db, "tenant-weight", "acme", "-1", cwd=tmp_path)
    assert weight.code == 2
    assert "WEIGHT" in weight.stderr
