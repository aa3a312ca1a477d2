"""FastAPI on asyncio (uvicorn): enqueue through a BlockingJobClient, off the event loop.

Run it with ``uvicorn recipe_fastapi_asyncio:app``; a ``trio-jobs worker`` on the
same store runs the jobs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request

from trio_jobs import BlockingJobClient, SQLiteStorage


def create_app(db_path: str) -> FastAPI:
    """The app, enqueueing into the SQLite file ``db_path``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client per process: its own Trio loop in a thread. Opening it
        # blocks briefly, so it goes to a worker thread too.
        jobs = BlockingJobClient(SQLiteStorage(db_path))
        await anyio.to_thread.run_sync(jobs.open)
        app.state.jobs = jobs
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(jobs.close)

    app = FastAPI(lifespan=lifespan)

    @app.post("/reports")
    async def order_report(request: Request, body: dict[str, Any]) -> dict[str, str]:
        jobs: BlockingJobClient = request.app.state.jobs
        submit = functools.partial(jobs.submit, "build-report", body, priority=2)
        return {"job_id": await anyio.to_thread.run_sync(submit)}

    @app.get("/jobs/{job_id}")
    async def job_status(request: Request, job_id: str) -> dict[str, Any]:
        jobs: BlockingJobClient = request.app.state.jobs
        job = await anyio.to_thread.run_sync(jobs.get_job, job_id)
        if job is None:
            raise HTTPException(status_code=404, detail="no such job")
        return {"status": job.status.value, "result": job.result}

    return app


app = create_app(os.environ.get("TRIO_JOBS_DB", "jobs.db"))
