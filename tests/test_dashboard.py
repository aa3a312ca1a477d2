"""The dashboard over HTTP: pages, actions, CSRF, read-only mode, basic auth, events, metrics.

Each test serves the app with Hypercorn's Trio worker on a free port (the way
``trio-jobs dashboard`` does) and talks to it with httpx.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dashboard_helpers import EventReader, client_of, csrf_token, failed_job, ok, served
from trio_jobs import Job, JobRunner, JobStatus, MemoryStorage, SQLiteStorage
from trio_jobs.dashboard import JobMetrics, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _save(storage: Any, n: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        job = Job(id=f"{fields.get('type', 'job')}-{i:03d}", **{"type": "job", **fields})
        await storage.save(job)
        ids.append(job.id)
    return ids


async def test_overview_counts_by_status_and_type() -> None:
    store = MemoryStorage()
    await _save(store, 3, type="email")
    await _save(store, 2, type="sms")
    await failed_job(store)
    async with client_of(store) as client:
        page = await client.get("/")
    assert page.status_code == 200
    html = page.text
    assert 'id="count-pending">5<' in html
    assert 'id="count-failed">1<' in html
    assert ">email</a>" in html
    assert ">sms</a>" in html
    assert ">boom</a>" in html
    assert "<svg" in html  # the throughput chart
    assert "oldest pending" in html


async def test_jobs_list_filters_and_pages_by_keyset() -> None:
    store = MemoryStorage()
    await _save(store, 60, type="email", tenant_id="acme")
    await _save(store, 5, type="sms")
    async with client_of(store) as client:
        first = await client.get("/jobs", params={"type": "email"})
        assert first.status_code == 200
        assert "email-059" in first.text
        assert "email-010" in first.text
        assert "email-009" not in first.text
        assert "sms-" not in first.text
        older = first.text.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
        assert "cursor=" in older
        assert "type=email" in older
        second = await client.get(older)
        assert "email-009" in second.text
        assert "email-000" in second.text
        assert "email-010" not in second.text
        assert 'rel="next"' not in second.text
        tenant = await client.get("/jobs", params={"tenant": "acme", "q": "-05"})
        assert "email-059" in tenant.text
        assert "email-050" in tenant.text
        assert "email-049" not in tenant.text
        bad = await client.get("/jobs", params={"status": "nonsense"})
        assert bad.status_code == 400
        foreign = await client.get("/jobs", params={"cursor": "x"})
        assert foreign.status_code == 400


async def test_job_page_shows_the_error_and_its_traceback() -> None:
    store = MemoryStorage()
    job_id = await failed_job(store, payload="nobody@example.com")
    async with client_of(store) as client:
        page = await client.get(f"/jobs/{job_id}")
        missing = await client.get("/jobs/no-such-job")
    assert page.status_code == 200
    assert "ValueError" in page.text
    assert "no such mailbox: nobody@example.com" in page.text
    assert "Traceback (most recent call last)" in page.text
    assert 'id="retry"' in page.text  # a failed job can be retried
    assert missing.status_code == 404


async def test_user_data_is_escaped_everywhere() -> None:
    store = MemoryStorage()
    evil = "<script>alert(1)</script>"
    await store.save(Job(id="x<b>", type=evil, payload={"html": evil}, tenant_id=evil))
    async with client_of(store) as client:
        pages = [
            await client.get("/"),
            await client.get("/jobs"),
            await client.get("/jobs/x<b>"),
        ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_cancel_and_retry_need_the_page_token() -> None:
    store = MemoryStorage()
    [pending] = await _save(store, 1)
    failed = await failed_job(store)
    async with client_of(store) as client:
        page = await client.get(f"/jobs/{pending}")
        token = csrf_token(page.text)
        forged = await client.post(f"/jobs/{pending}/cancel", data={"csrf_token": "guess"})
        assert forged.status_code == 403
        assert (await store.get(pending)).status is JobStatus.PENDING
        done = await client.post(f"/jobs/{pending}/cancel", data={"csrf_token": token})
        assert done.status_code == 303
        assert (await store.get(pending)).status is JobStatus.CANCELLED
        again = await client.post(f"/jobs/{pending}/cancel", data={"csrf_token": token})
        assert again.status_code == 409
        by_header = await client.post(f"/jobs/{failed}/retry", headers={"X-CSRF-Token": token})
        assert by_header.status_code == 303
        assert (await store.get(failed)).status is JobStatus.PENDING


async def test_purge_by_filter_keeps_unfinished_jobs() -> None:
    store = MemoryStorage()
    failed = await failed_job(store)
    [pending] = await _save(store, 1, type="boom")
    async with client_of(store) as client:
        token = csrf_token((await client.get("/jobs")).text)
        refused = await client.post("/purge", data={"csrf_token": token, "status": "pending"})
        assert refused.status_code == 400
        done = await client.post("/purge", data={"csrf_token": token, "type": "boom"})
        assert done.status_code == 303
        assert done.headers["location"] == "/jobs?notice=purged&deleted=1"
    assert await store.get(failed) is None
    assert await store.get(pending) is not None


async def test_read_only_shows_no_action_and_refuses_posts() -> None:
    store = MemoryStorage()
    [pending] = await _save(store, 1)
    failed = await failed_job(store)
    async with client_of(store) as writable:
        token = csrf_token((await writable.get("/jobs")).text)
    async with client_of(store, read_only=True) as client:
        for path in ("/", "/jobs", f"/jobs/{pending}", f"/jobs/{failed}"):
            page = await client.get(path)
            assert page.status_code == 200
            assert '<form method="post"' not in page.text
            assert "csrf_token" not in page.text
        for path in (f"/jobs/{pending}/cancel", f"/jobs/{failed}/retry", "/purge"):
            response = await client.post(path, data={"csrf_token": token})
            assert response.status_code == 403
        assert (await client.post("/types/job/pause")).status_code == 403
    assert (await store.get(pending)).status is JobStatus.PENDING
    assert (await store.get(failed)).status is JobStatus.FAILED


async def test_basic_auth_guards_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_JOBS_DASHBOARD_PASSWORD", "s3cret")
    monkeypatch.delenv("TRIO_JOBS_DASHBOARD_USER", raising=False)
    store = MemoryStorage()
    async with client_of(store) as client:
        for path in ("/", "/jobs", "/jobs/x", "/metrics", "/static/style.css", "/events"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic")
        assert (await client.post("/purge")).status_code == 401
        assert (await client.get("/", auth=("admin", "wrong"))).status_code == 401
        assert (await client.get("/", auth=("root", "s3cret"))).status_code == 401
        garbage = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
        assert (await client.get("/", headers=garbage)).status_code == 401
        assert (await client.get("/", auth=("admin", "s3cret"))).status_code == 200
        assert (await client.get("/metrics", auth=("admin", "s3cret"))).status_code == 200


async def test_basic_auth_user_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_JOBS_DASHBOARD_PASSWORD", "pw")
    monkeypatch.setenv("TRIO_JOBS_DASHBOARD_USER", "ops")
    async with client_of(MemoryStorage()) as client:
        assert (await client.get("/", auth=("admin", "pw"))).status_code == 401
        assert (await client.get("/", auth=("ops", "pw"))).status_code == 200


async def test_events_push_new_counts_when_a_job_completes() -> None:
    store = MemoryStorage()
    runner = JobRunner(storage=store)
    release = trio.Event()

    async def gated(job: Any, ctx: Any) -> str:
        await release.wait()
        return "done"

    runner.register_handler("gated", gated)
    async with runner, served(store) as url, EventReader.open(url) as events:
        assert "content-type: text/event-stream" in events.headers.lower()
        handle = await runner.submit("gated")
        seen: list[str] = []
        with trio.fail_after(30):
            while 'id="count-completed">1<' not in (html := await events.next_html()):
                seen.append(html)
                if 'id="count-running">1<' in html:
                    release.set()
            seen.append(html)
        await handle.wait()
    assert 'id="count-completed">0<' in seen[0]
    assert 'id="count-completed">1<' in seen[-1]


async def test_metrics_parse_and_count_jobs_by_status_and_type() -> None:
    store = MemoryStorage()
    await _save(store, 2, type="email")
    await failed_job(store)
    async with client_of(store) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    jobs = {
        (s.labels["status"], s.labels["job_type"]): s.value
        for s in families["trio_jobs_jobs"].samples
    }
    assert jobs == {("pending", "email"): 2.0, ("failed", "boom"): 1.0}
    assert families["trio_jobs_jobs"].type == "gauge"
    assert families["trio_jobs_workers"].samples[0].value == 0.0
    assert families["trio_jobs_oldest_pending_age_seconds"].samples[0].value >= 0.0
    for counter in ("trio_jobs_completed", "trio_jobs_failed", "trio_jobs_retried"):
        assert families[counter].type == "counter"
    assert families["trio_jobs_attempt_duration_seconds"].type == "histogram"
    assert families["trio_jobs_submit_to_start_seconds"].type == "histogram"


async def test_metrics_count_a_runners_attempts() -> None:
    metrics = JobMetrics()
    runner = JobRunner()
    runner.register_handler("ok", ok)
    runner.register_handler("boom", _raise)
    detach = metrics.attach(runner)
    async with runner:
        await (await runner.submit("ok")).wait()
        failing = await runner.submit("boom", retry={"max_attempts": 2, "base_delay": 0.01})
        with pytest.raises(Exception, match="nope"):
            await failing.wait()
    detach()
    text = metrics.render()[0].decode()
    values = {
        (s.name, s.labels.get("job_type")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert values[("trio_jobs_completed_total", "ok")] == 1.0
    assert values[("trio_jobs_failed_total", "boom")] == 1.0
    assert values[("trio_jobs_retried_total", "boom")] == 1.0
    assert values[("trio_jobs_attempt_duration_seconds_count", "boom")] == 2.0
    assert values[("trio_jobs_submit_to_start_seconds_count", "ok")] == 1.0
    # Two apps never share metrics: each has its own registry.
    assert JobMetrics().registry is not metrics.registry


async def _raise(job: Any, ctx: Any) -> None:
    raise RuntimeError("nope")


async def test_the_app_opens_and_closes_a_store_that_is_not_open(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "jobs.db")
    async with client_of(store) as client:
        assert (await client.get("/")).status_code == 200
        await store.save(Job(id="seen", type="t"))  # open, through the app's lifespan
    with pytest.raises((RuntimeError, trio.ClosedResourceError)):
        await store.get("seen")


async def test_the_app_leaves_an_open_store_open(tmp_path: Path) -> None:
    async with SQLiteStorage(tmp_path / "jobs.db") as store:
        async with client_of(store) as client:
            assert (await client.get("/")).status_code == 200
        await store.save(Job(id="still-open", type="t"))
        assert await store.get("still-open") is not None


def test_a_store_without_the_dashboard_queries_is_refused() -> None:
    with pytest.raises(TypeError, match="JobBrowser"):
        create_app(object())  # type: ignore[arg-type]


async def test_pause_resume_schedules_and_limits_appear_when_the_client_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import attrs

    from trio_jobs.dashboard import _app

    @attrs.frozen
    class Limits:
        max_running: int | None = 2
        paused: bool = False

    @attrs.frozen
    class Schedule:
        key: str = "nightly"
        job_type: str = "report"
        cron: str | None = "0 3 * * *"
        every: float | None = None
        next_run_at: Any = None
        last_run_at: Any = None

    paused: set[str] = set()

    class FlowClient(_app.JobClient):  # type: ignore[misc]
        async def pause(self, job_type: str) -> None:
            paused.add(job_type)

        async def resume(self, job_type: str) -> None:
            paused.discard(job_type)

        async def get_limits(self, job_type: str) -> Limits:
            return Limits(paused=job_type in paused)

        async def schedules(self) -> list[Schedule]:
            return [Schedule()]

    store = MemoryStorage()
    await _save(store, 1, type="report")
    async with client_of(store) as real:
        # JobClient has flow control (issue 14): the buttons act on the store itself.
        html = (await real.get("/")).text
        assert "Pause" in html
        token = csrf_token(html)
        done = await real.post("/types/report/pause", data={"csrf_token": token})
        assert done.status_code == 303
        assert (await store.get_limits("report")).paused
        await real.post("/types/report/resume", data={"csrf_token": token})
        assert not (await store.get_limits("report")).paused
    monkeypatch.setattr(_app, "JobClient", FlowClient)
    async with client_of(store) as client:
        html = (await client.get("/")).text
        assert "Schedules" in html
        assert "nightly" in html
        assert "0 3 * * *" in html
        assert "max running 2" in html
        token = csrf_token(html)
        done = await client.post("/types/report/pause", data={"csrf_token": token})
        assert done.status_code == 303
        assert paused == {"report"}
        html = (await client.get("/")).text
        assert "paused</span>" in html
        assert "Resume" in html
        await client.post("/types/report/resume", data={"csrf_token": token})
        assert paused == set()
