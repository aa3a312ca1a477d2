"""OpenTelemetry: submit -> attempt linkage, seen through the SDK's in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest

from trio_jobs import JobClient, JobRunner, MemoryStorage

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The spans finished during the test, by an SDK provider of the test's own.

    The process-wide provider is left alone (it can be set only once, and other
    tests must see no tracing): only during this test does the API return it.
    """
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exporter
    provider.shutdown()


async def test_first_attempt_is_a_child_of_submit_and_a_retry_only_links_it(spans: Any) -> None:
    runner = JobRunner()
    calls = 0

    async def flaky(job: Any, ctx: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("try again")
        return "ok"

    runner.register_handler("flaky", flaky)
    async with runner:
        handle = await runner.submit("flaky", retry={"max_attempts": 2, "base_delay": 0.01})
        assert await handle.wait() == "ok"
    finished = spans.get_finished_spans()
    [publish] = [s for s in finished if s.name == "publish flaky"]
    attempts = sorted(
        (s for s in finished if s.name == "process flaky"),
        key=lambda s: s.attributes["trio_jobs.attempt"],
    )
    assert publish.kind is trace.SpanKind.PRODUCER
    assert publish.attributes["messaging.message.id"] == handle.id
    assert [s.kind for s in attempts] == [trace.SpanKind.CONSUMER] * 2
    first, retry = attempts
    # The first attempt continues the submit's trace...
    assert first.parent is not None
    assert first.parent.span_id == publish.context.span_id
    assert first.context.trace_id == publish.context.trace_id
    # ...a retry starts its own, linked to the submit, not parented by it.
    assert retry.parent is None
    assert retry.context.trace_id != publish.context.trace_id
    assert [link.context.span_id for link in retry.links] == [publish.context.span_id]
    assert first.status.status_code is trace.StatusCode.ERROR
    assert retry.status.status_code is trace.StatusCode.UNSET


async def test_the_trace_context_travels_in_the_job_to_another_process(spans: Any) -> None:
    store = MemoryStorage()
    async with JobClient(store) as client:
        handle = await client.submit("remote", {"x": 1})
    job = await store.get(handle.id)
    assert job is not None
    carrier = job.metadata["trace_context"]
    [publish] = spans.get_finished_spans()
    assert carrier["traceparent"].split("-")[2] == format(publish.context.span_id, "016x")
    runner = JobRunner(storage=store)

    async def remote(job: Any, ctx: Any) -> int:
        return int(job.payload["x"])

    runner.register_handler("remote", remote)
    async with runner:
        assert await (await runner.get_handle(handle.id)).wait() == 1
    [attempt] = [s for s in spans.get_finished_spans() if s.name == "process remote"]
    assert attempt.parent is not None
    assert attempt.parent.span_id == publish.context.span_id


async def test_without_an_sdk_a_job_carries_no_trace_context() -> None:
    async with JobClient(MemoryStorage()) as client:
        handle = await client.submit("plain", metadata={"k": "v"})
        job = await client.get_job(handle.id)
    assert job is not None
    assert job.metadata == {"k": "v"}
