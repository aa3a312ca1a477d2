"""The dashboard's Starlette app: its routes, its lifespan and its live updates.

Pages are rendered on the server by Jinja2 (autoescaping on: payloads, errors,
ids and types are user data). One small vendored script, ``live.js``, swaps the
overview's live part for the fresh HTML that ``GET /events`` (server-sent events)
pushes whenever it changes. The event stream wakes up on the store's own
change notifications for the jobs in flight (``wait_for_change``), and re-reads
at least every :data:`REFRESH` seconds for the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import jinja2
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._client import JobClient
from .._records import JobStatus, utcnow
from ..storage._base import JobStorage, WorkerRegistry
from ..storage._browse import FINAL_STATUSES, JobBrowser
from . import _views as views
from ._chart import throughput_svg
from ._metrics import JobMetrics
from ._security import BasicAuth, Credentials, csrf_matches, new_csrf_token

HERE = Path(__file__).parent
#: Seconds between two reads of the store by a live page, at most.
REFRESH: Final = 1.0
#: Jobs in flight whose changes wake a live page at once.
WATCHED: Final = 20
PAGE_SIZE: Final = 50

Handler = Callable[[Request], Awaitable[Response]]

#: Notices an action leaves for the next page (by key: no user text is echoed).
NOTICES: Final = {
    "cancelled": "Cancellation requested.",
    "retried": "The job was queued again.",
    "purged": "Final jobs matching the filters were deleted.",
    "paused": "The job type is paused: no runner claims its jobs until it is resumed.",
    "resumed": "The job type is resumed.",
}


def create_app(storage: JobStorage, *, read_only: bool = False) -> Starlette:
    """Return the dashboard of ``storage`` as an ASGI app (Starlette, runs on Trio).

    Serve it with Hypercorn's Trio worker (``trio-jobs dashboard`` does), or mount
    it in your own Starlette app. The app opens ``storage`` when it starts (ASGI
    lifespan) if it is not open yet, and then closes it when it stops.

    Routes: ``/`` (overview, live), ``/jobs`` (filters ``status``, ``type``,
    ``tenant``, ``q``; keyset paging with ``cursor``), ``/jobs/{id}``,
    ``/events`` (server-sent events), ``/metrics`` (Prometheus), and the actions
    ``POST /jobs/{id}/cancel``, ``POST /jobs/{id}/retry``, ``POST /purge``,
    ``POST /types/{job_type}/pause`` and ``/resume``. Actions need the CSRF token
    of the app's pages (form field ``csrf_token`` or header ``X-CSRF-Token``).

    With ``TRIO_JOBS_DASHBOARD_PASSWORD`` set in the environment, every route asks
    for HTTP basic auth: that password and the user ``TRIO_JOBS_DASHBOARD_USER``
    (default ``admin``).

    Args:
        storage: The store to show; it must implement
            :class:`~trio_jobs.storage.JobBrowser` (the built-in stores do).
        read_only: Show no actions and answer 403 to every action.

    Raises:
        TypeError: ``storage`` is no :class:`~trio_jobs.storage.JobBrowser`.
    """
    if not isinstance(storage, JobBrowser):
        raise TypeError(
            f"{type(storage).__name__} cannot be shown: it does not implement "
            "trio_jobs.storage.JobBrowser (browse_jobs, summarize, purge_jobs)"
        )
    return _Dashboard(storage, read_only=read_only, environ=os.environ).app


def create_metrics_app(storage: JobStorage, metrics: JobMetrics | None = None) -> Starlette:
    """Return an ASGI app serving only ``GET /metrics`` (``trio-jobs worker --metrics-port``).

    Basic auth applies as for :func:`create_app`. The app opens and closes
    ``storage`` through its lifespan only if it is not open yet.

    Args:
        storage: The store whose gauges it reads at each scrape.
        metrics: The metrics to serve (e.g. attached to a runner); new ones by default.
    """
    metrics = metrics if metrics is not None else JobMetrics()

    async def metrics_page(request: Request) -> Response:
        await metrics.refresh(storage)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    credentials = Credentials.from_environ(os.environ)
    middleware = [] if credentials is None else [Middleware(BasicAuth, credentials)]
    return Starlette(
        routes=[Route("/metrics", metrics_page)],
        middleware=middleware,
        lifespan=partial(_store_lifespan, storage),
    )


@asynccontextmanager
async def _store_lifespan(storage: Any, app: Starlette) -> AsyncIterator[None]:
    """Open ``storage`` for the app's life if it is not open; then close it."""
    owned = not await _is_open(storage)
    if owned:
        await storage.open()
    try:
        yield
    finally:
        if owned:
            with trio.CancelScope(shield=True):
                await storage.close()


class _Dashboard:
    """One app's state: its store, client, token, metrics and templates."""

    def __init__(self, storage: Any, *, read_only: bool, environ: Mapping[str, str]) -> None:
        self.storage = storage
        self.client = JobClient(storage)
        self.read_only = bool(read_only)
        self.csrf = new_csrf_token()
        self.metrics = JobMetrics()
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(views.FILTERS)
        self.templates.globals.update(query=views.query, STATUSES=views.STATUS_ORDER)
        routes = [
            Route("/", self.overview),
            Route("/events", self.events),
            Route("/metrics", self.metrics_page),
            Route("/jobs", self.jobs),
            Route("/purge", self.action(self.purge), methods=["POST"]),
            Route("/jobs/{job_id:path}/cancel", self.action(self.cancel), methods=["POST"]),
            Route("/jobs/{job_id:path}/retry", self.action(self.retry), methods=["POST"]),
            Route("/jobs/{job_id:path}", self.job),
            Route("/types/{job_type:path}/pause", self.action(self.pause), methods=["POST"]),
            Route("/types/{job_type:path}/resume", self.action(self.resume), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        credentials = Credentials.from_environ(environ)
        middleware = [] if credentials is None else [Middleware(BasicAuth, credentials)]
        self.app = Starlette(
            routes=routes, middleware=middleware, lifespan=partial(_store_lifespan, storage)
        )
        self.app.state.metrics = self.metrics

    # -- rendering ------------------------------------------------------------------

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            read_only=self.read_only, csrf_token=self.csrf, **context
        )
        return HTMLResponse(html, status_code=status_code)

    def error(self, status_code: int, message: str) -> HTMLResponse:
        return self.render("error.html", status_code, message=message, notice=None)

    async def live_context(self) -> dict[str, Any]:
        summary = await self.storage.summarize(minutes=60)
        workers = await self.storage.workers() if isinstance(self.storage, WorkerRegistry) else None
        types = summary.job_types()
        return {
            "summary": summary,
            "by_status": summary.by_status(),
            "type_rows": views.type_rows(summary),
            "workers": workers,
            "limits": await views.limits_of(self.client, types),
            "schedules": await views.schedules_of(self.client),
            "can_pause": views.can_pause(self.client) and not self.read_only,
            "chart": throughput_svg(summary.per_minute),
            "now": utcnow(),
        }

    async def render_live(self) -> str:
        context = await self.live_context()
        return self.templates.get_template("_live.html").render(
            read_only=self.read_only, csrf_token=self.csrf, **context
        )

    # -- pages ----------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        live = await self.render_live()
        return self.render("overview.html", live=live, notice=_notice(request))

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last = None
            while True:
                html = await self.render_live()
                if html != last:
                    last = html
                    yield f"event: overview\ndata: {json.dumps({'html': html})}\n\n"
                else:
                    yield ": idle\n\n"
                await self.wait_for_changes()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def wait_for_changes(self) -> None:
        """Return when a job in flight changes, or after :data:`REFRESH` seconds."""
        watched = []
        for status in (JobStatus.RUNNING, JobStatus.PENDING, JobStatus.RETRYING):
            page = await self.storage.browse_jobs(status=status, limit=WATCHED)
            watched += [job.id for job in page.jobs]
        with trio.move_on_after(REFRESH):
            async with trio.open_nursery() as nursery:

                async def watch(job_id: str) -> None:
                    await self.storage.wait_for_change(job_id, REFRESH)
                    nursery.cancel_scope.cancel()

                for job_id in watched[: 2 * WATCHED]:
                    nursery.start_soon(watch, job_id)
                if not watched:
                    await trio.sleep(REFRESH)

    async def metrics_page(self, request: Request) -> Response:
        await self.metrics.refresh(self.storage)
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        status_name = params.get("status") or None
        try:
            status = None if status_name is None else JobStatus(status_name)
        except ValueError:
            return self.error(400, f"unknown status {status_name!r}")
        filters = {
            "status": status,
            "job_type": params.get("type") or None,
            "tenant_id": params.get("tenant") or None,
            "search": params.get("q") or None,
        }
        try:
            page = await self.storage.browse_jobs(
                **filters, cursor=params.get("cursor") or None, limit=PAGE_SIZE
            )
        except ValueError as exc:
            return self.error(400, str(exc))
        return self.render(
            "jobs.html",
            page=page,
            filters=filters,
            first_page=params.get("cursor") is not None,
            types=await self.storage.job_types(),
            final_statuses=FINAL_STATUSES,
            notice=_notice(request),
            now=utcnow(),
        )

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = await self.storage.get(job_id)
        if job is None:
            return self.error(404, f"no job {job_id!r}")
        return self.render(
            "job.html",
            job=job,
            held_back=await self.client.held_back(job),
            progress=views.progress_percent(job),
            can_retry=job.status in views.RETRYABLE,
            notice=_notice(request),
        )

    # -- actions --------------------------------------------------------------------

    def action(self, handler: Callable[[Request, dict[str, str]], Awaitable[Response]]) -> Handler:
        """Wrap an action: refused in read-only mode, and without the page's CSRF token."""

        async def guarded(request: Request) -> Response:
            if self.read_only:
                return self.error(403, "this dashboard is read-only")
            form = await _form(request)
            token = form.get("csrf_token") or request.headers.get("x-csrf-token")
            if not csrf_matches(self.csrf, token):
                return self.error(403, "missing or wrong CSRF token: reload the page and retry")
            return await handler(request, form)

        return guarded

    async def cancel(self, request: Request, form: dict[str, str]) -> Response:
        job_id = request.path_params["job_id"]
        if not await self.client.cancel(job_id):
            return self.error(409, f"job {job_id!r} is unknown or already finished")
        return _see_other(f"/jobs/{views.path_part(job_id)}?notice=cancelled")

    async def retry(self, request: Request, form: dict[str, str]) -> Response:
        job_id = request.path_params["job_id"]
        if not await self.storage.requeue(job_id):
            return self.error(409, f"job {job_id!r} is not failed, timed out or cancelled")
        return _see_other(f"/jobs/{views.path_part(job_id)}?notice=retried")

    async def purge(self, request: Request, form: dict[str, str]) -> Response:
        try:
            status = JobStatus(form["status"]) if form.get("status") else None
            deleted = await self.storage.purge_jobs(
                status=status,
                job_type=form.get("type") or None,
                tenant_id=form.get("tenant") or None,
            )
        except ValueError as exc:
            return self.error(400, str(exc))
        return _see_other(f"/jobs?notice=purged&deleted={deleted}")

    async def pause(self, request: Request, form: dict[str, str]) -> Response:
        return await self._flow(request, "pause", "paused")

    async def resume(self, request: Request, form: dict[str, str]) -> Response:
        return await self._flow(request, "resume", "resumed")

    async def _flow(self, request: Request, method: str, notice: str) -> Response:
        if not views.can_pause(self.client):
            return self.error(404, "this store cannot pause job types")
        await getattr(self.client, method)(request.path_params["job_type"])
        return _see_other(f"/?notice={notice}")


async def _is_open(storage: Any) -> bool:
    """Whether ``storage`` is open: a read of an unknown id works only on an open store."""
    try:
        await storage.get("")
    except (RuntimeError, trio.ClosedResourceError):
        return False
    return True


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (first value of each field)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[0] for key, values in parse_qs(body).items()}


def _notice(request: Request) -> str | None:
    key = request.query_params.get("notice")
    text = NOTICES.get(key or "")
    if key == "purged":
        deleted = request.query_params.get("deleted", "")
        if deleted.isdigit():
            text = f"{int(deleted):,} final job(s) matching the filters were deleted."
    return text


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


__all__ = ["create_app", "create_metrics_app"]
