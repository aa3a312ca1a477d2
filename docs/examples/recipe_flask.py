"""Flask: one BlockingJobClient per process, shared by every request thread.

Run it with ``flask --app recipe_flask run`` (or gunicorn with threads); a
``trio-jobs worker`` on the same store runs the jobs.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, current_app, request

from trio_jobs import BlockingJobClient, SQLiteStorage


def create_app(db_path: str) -> Flask:
    """The app, enqueueing into the SQLite file ``db_path``."""
    app = Flask(__name__)
    # Opened once, closed at interpreter exit (or call close() yourself). With a
    # pre-forking server, create the app in each worker, after the fork.
    app.extensions["jobs"] = BlockingJobClient(SQLiteStorage(db_path)).open()

    @app.post("/reports")
    def order_report() -> dict[str, Any]:
        jobs: BlockingJobClient = current_app.extensions["jobs"]
        return {"job_id": jobs.submit("build-report", request.get_json(), priority=2)}

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> dict[str, Any]:
        jobs: BlockingJobClient = current_app.extensions["jobs"]
        job = jobs.get_job(job_id)
        if job is None:
            abort(404)
        return {"status": job.status.value, "result": job.result}

    return app


if __name__ == "__main__":
    create_app(os.environ.get("TRIO_JOBS_DB", "jobs.db")).run()
