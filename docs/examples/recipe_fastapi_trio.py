"""FastAPI on Trio (Hypercorn's trio worker): a JobClient opened in the lifespan.

Run it with ``hypercorn --worker-class trio recipe_fastapi_trio:app``. The app runs
in Trio itself, so it uses the async :class:`JobClient` directly: no threads.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from trio_jobs import JobClient, SQLiteStorage


def create_app(db_path: str) -> FastAPI:
    """The app, enqueueing into the SQLite file ``db_path``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with JobClient(SQLiteStorage(db_path)) as jobs:
            app.state.jobs = jobs
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/reports")
    async def order_report(request: Request, body: dict[str, Any]) -> dict[str, str]:
        jobs: JobClient = request.app.state.jobs
        handle = await jobs.submit("build-report", body, priority=2)
        return {"job_id": handle.id}

    @app.get("/jobs/{job_id}")
    async def job_status(request: Request, job_id: str) -> dict[str, Any]:
        jobs: JobClient = request.app.state.jobs
        job = await jobs.get_job(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        return {"status": job.status.value, "result": job.result}

    return app


app = create_app(os.environ.get("TRIO_JOBS_DB", "jobs.db"))
