"""The recipes of "Enqueue from Django, Flask or FastAPI", run against their frameworks.

Each app in ``docs/examples/recipe_*`` enqueues a job into a SQLite file and
reports on it; a :class:`BlockingJobClient` in the test reads the same file, as
a worker would.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from trio_jobs import BlockingJobClient, JobPriority, JobStatus, SQLiteStorage

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
DEADLINE = 60.0  # seconds of real time; never asserted on

pytest.importorskip("fastapi")
pytest.importorskip("flask")
pytest.importorskip("django")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "jobs.db")
    monkeypatch.setenv("TRIO_JOBS_DB", path)
    monkeypatch.chdir(tmp_path)  # the modules' own default app writes here
    return path


def check_enqueued(db: str, job_id: str, payload: Any) -> None:
    with BlockingJobClient(SQLiteStorage(db)) as jobs:
        job = jobs.get_job(job_id)
    assert job is not None
    assert (job.type, job.payload, job.status, job.priority) == (
        "build-report",
        payload,
        JobStatus.PENDING,
        JobPriority.HIGH,
    )


def test_fastapi_on_asyncio_enqueues_through_a_blocking_client(db: str) -> None:
    from fastapi.testclient import TestClient

    app = load("recipe_fastapi_asyncio").create_app(db)
    with TestClient(app) as http:
        answer = http.post("/reports", json={"month": "2024-05"})
        assert answer.status_code == 200
        job_id = answer.json()["job_id"]
        assert http.get(f"/jobs/{job_id}").json() == {"status": "pending", "result": None}
        assert http.get("/jobs/nope").status_code == 404
    check_enqueued(db, job_id, {"month": "2024-05"})


async def test_fastapi_on_trio_under_hypercorn_enqueues_through_a_job_client(db: str) -> None:
    import httpx2 as httpx
    from hypercorn.config import Config
    from hypercorn.trio import serve

    app = load("recipe_fastapi_trio").create_app(db)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            async with httpx.AsyncClient(base_url=binds[0]) as http:
                answer = await http.post("/reports", json={"month": "2024-06"})
                assert answer.status_code == 200
                job_id = answer.json()["job_id"]
                status = await http.get(f"/jobs/{job_id}")
                assert status.json() == {"status": "pending", "result": None}
                assert (await http.get("/jobs/nope")).status_code == 404
            stop.set()
    await trio.to_thread.run_sync(check_enqueued, db, job_id, {"month": "2024-06"})


def test_flask_view_enqueues_through_a_blocking_client(db: str) -> None:
    app = load("recipe_flask").create_app(db)
    try:
        http = app.test_client()
        answer = http.post("/reports", json={"month": "2024-07"})
        assert answer.status_code == 200
        job_id = answer.get_json()["job_id"]
        assert http.get(f"/jobs/{job_id}").get_json() == {"status": "pending", "result": None}
        assert http.get("/jobs/nope").status_code == 404
    finally:
        app.extensions["jobs"].close()
    check_enqueued(db, job_id, {"month": "2024-07"})


def test_django_view_enqueues_through_a_blocking_client(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import django
    from django.apps import apps
    from django.test import Client

    if apps.ready:
        pytest.skip("Django was set up by another test in this process")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "recipe_django.settings")
    django.setup()
    try:
        http = Client()
        answer = http.post("/reports", {"month": "2024-08"}, content_type="application/json")
        assert answer.status_code == 202
        job_id = answer.json()["job_id"]
        assert http.get(f"/jobs/{job_id}").json() == {"status": "pending", "result": None}
        assert http.get("/jobs/nope").status_code == 404
    finally:
        apps.get_app_config("recipe_jobs").client.close()
        for name in [m for m in sys.modules if m.startswith("recipe_django")]:
            del sys.modules[name]
    check_enqueued(db, job_id, {"month": "2024-08"})
