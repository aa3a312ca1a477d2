"""The dashboard in a real browser: Playwright for Python driving Debian's chromium.

Skipped when Playwright or ``/usr/bin/chromium`` is missing (``.ci/run``
installs both). The app runs in a Trio loop of its own on a thread, with a
runner on the same in-memory store; the test (synchronous, as Playwright's sync
API wants) reaches into that loop with ``trio.from_thread``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dashboard_helpers import boom, served
from trio_jobs import Job, JobClient, JobRunner, MemoryStorage, RetryConfig

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip(f"no chromium at {CHROMIUM}", allow_module_level=True)

pytestmark = pytest.mark.slow
DEADLINE_MS = 30_000


class LiveServer:
    """The dashboard of a memory store, with a runner, in a Trio loop on a thread."""

    def __init__(self, **options: Any) -> None:
        self.store = MemoryStorage()
        self.options = options
        self.url = ""
        self.release = trio.Event()  # lets "gated" jobs finish
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._error: BaseException | None = None

    async def _main(self) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self.release = trio.Event()
            runner = JobRunner(storage=self.store, poll_interval=0.05)
            runner.register_handler("boom", boom)
            runner.register_handler("gated", self._gated)
            self.runner = runner
            # Jobs of types this runner has no handler for are submitted by a client.
            self.client = JobClient(self.store)
            async with runner, self.client, served(self.store, **self.options) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    async def _gated(self, job: Any, ctx: Any) -> str:
        await self.release.wait()
        return "done"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        assert self._ready.wait(60), "the dashboard did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the server's loop; return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def submit(self, job_type: str, payload: Any = None, **options: Any) -> str:
        async def submit() -> str:
            return (await self.client.submit(job_type, payload, **options)).id

        return str(self.call(submit))

    def failed_job(self, payload: Any = "ada@example.com") -> str:
        async def run() -> str:
            handle = await self.runner.submit("boom", payload, retry=RetryConfig(max_attempts=1))
            with trio.move_on_after(30):
                while not (await self.store.get(handle.id)).status.is_final:  # type: ignore[union-attr]
                    await self.store.wait_for_change(handle.id, 1.0)
            return handle.id

        return str(self.call(run))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(DEADLINE_MS)
    yield page
    context.close()


def test_overview_counts_change_without_reload(page: Any) -> None:
    expect = sync_api.expect
    with LiveServer() as server:
        page.goto(server.url + "/")
        expect(page.locator("#count-completed")).to_have_text("0")
        page.evaluate("window.__sameDocument = true")
        server.submit("gated")
        expect(page.locator("#count-running")).to_have_text("1")
        server.call(_set, server.release)
        expect(page.locator("#count-completed")).to_have_text("1")
        expect(page.locator("#count-running")).to_have_text("0")
        assert page.evaluate("window.__sameDocument") is True  # never reloaded


async def _set(event: trio.Event) -> None:
    event.set()


def test_filtering_and_paging(page: Any) -> None:
    expect = sync_api.expect
    with LiveServer() as server:

        async def fill() -> None:
            for i in range(55):
                await server.store.save(Job(id=f"email-{i:03d}", type="email", tenant_id="acme"))
            for i in range(3):
                await server.store.save(Job(id=f"sms-{i:03d}", type="sms"))

        server.call(fill)
        page.goto(server.url + "/jobs")
        page.select_option("select[name=type]", "email")
        page.click("form.filters button")
        rows = page.locator("table.jobs tbody tr")
        expect(rows).to_have_count(50)
        expect(rows.first).to_contain_text("email-054")
        expect(page.locator("table.jobs")).not_to_contain_text("sms-")
        page.click("a[rel=next]")
        expect(rows).to_have_count(5)
        expect(rows.first).to_contain_text("email-004")
        expect(rows.last).to_contain_text("email-000")
        expect(page.locator("a[rel=next]")).to_have_count(0)
        page.fill("input[name=q]", "-05")
        page.click("form.filters button")
        expect(rows).to_have_count(5)  # email-050 .. email-054
        page.goto(server.url + "/jobs?tenant=nobody")
        expect(page.locator("main")).to_contain_text("No job matches.")


def test_job_page_shows_the_traceback(page: Any) -> None:
    expect = sync_api.expect
    with LiveServer() as server:
        job_id = server.failed_job("nobody@example.com")
        page.goto(server.url + "/jobs")
        page.click(f"text={job_id}")
        expect(page.locator("#job-status")).to_have_text("failed")
        expect(page.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
        expect(page.locator("pre.traceback")).to_contain_text("ValueError")
        expect(page.locator(".error-text")).to_contain_text("no such mailbox: nobody@example.com")


def test_cancel_and_retry_from_the_page(page: Any) -> None:
    expect = sync_api.expect
    with LiveServer() as server:
        job_id = server.submit("idle")  # no handler: it waits
        page.goto(f"{server.url}/jobs/{job_id}")
        expect(page.locator("#job-status")).to_have_text("pending")
        page.click("#cancel")
        expect(page.locator("#job-status")).to_have_text("cancelled")
        expect(page.locator(".notice")).to_contain_text("Cancellation requested")
        page.click("#retry")
        expect(page.locator("#job-status")).to_have_text("pending")
        expect(page.locator(".notice")).to_contain_text("queued again")
        job = server.call(server.store.get, job_id)
        assert job.status.value == "pending"


def test_read_only_shows_no_action_and_refuses_a_forged_post(page: Any) -> None:
    expect = sync_api.expect
    with LiveServer(read_only=True) as server:
        pending = server.submit("idle")
        failed = server.failed_job()
        for path in ("/", "/jobs", f"/jobs/{pending}", f"/jobs/{failed}"):
            page.goto(server.url + path)
            expect(page.locator("form[method=post]")).to_have_count(0)
            expect(page.locator("button")).to_have_count(1 if path == "/jobs" else 0)  # Filter
        status = page.evaluate(
            """async (id) => (await fetch(`/jobs/${id}/cancel`, {method: "POST",
                 headers: {"Content-Type": "application/x-www-form-urlencoded"},
                 body: "csrf_token=forged"})).status""",
            pending,
        )
        assert status == 403
        assert server.call(server.store.get, pending).status.value == "pending"


def test_a_script_payload_renders_as_text(page: Any) -> None:
    expect = sync_api.expect
    evil = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
    with LiveServer() as server:
        job_id = server.submit(evil, {"note": evil}, metadata={"m": evil})
        for path in ("/", "/jobs", f"/jobs/{job_id}"):
            page.goto(server.url + path)
            assert page.evaluate("window.__pwned") is None
        expect(page.locator("#payload")).to_contain_text("<script>window.__pwned = 1</script>")
        expect(page.locator("h1")).to_contain_text(job_id)


def _assert_refused(context: Any, url: str) -> None:
    """Navigating to ``url`` shows no page: a 401, or chromium's own auth error."""
    failure = ""
    try:
        response = context.new_page().goto(url)
    except sync_api.Error as exc:  # chromium gave up on the credentials it was given
        failure = str(exc)
    else:
        assert response.status == 401
    assert not failure or "ERR_INVALID_AUTH_CREDENTIALS" in failure


def test_basic_auth_is_enforced(browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_JOBS_DASHBOARD_PASSWORD", "correct horse")
    monkeypatch.setenv("TRIO_JOBS_DASHBOARD_USER", "ops")
    with LiveServer() as server:
        anonymous = browser.new_context()
        try:
            for path in ("/", "/jobs", "/metrics", "/events", "/static/live.js"):
                response = anonymous.request.get(server.url + path)
                assert response.status == 401, path
                assert response.headers["www-authenticate"].startswith("Basic")
            _assert_refused(anonymous, server.url + "/")
        finally:
            anonymous.close()
        wrong = browser.new_context(http_credentials={"username": "ops", "password": "nope"})
        try:
            _assert_refused(wrong, server.url + "/")
        finally:
            wrong.close()
        allowed = browser.new_context(
            http_credentials={"username": "ops", "password": "correct horse"}
        )
        try:
            page = allowed.new_page()
            assert page.goto(server.url + "/").status == 200
            sync_api.expect(page.locator("#count-pending")).to_have_text("0")
        finally:
            allowed.close()
