"""OpenTelemetry: a producer span on submit, a consumer span per attempt, linked.

Active only when ``opentelemetry-api`` is importable (``pip install
'trio-jobs[otel]'``); otherwise, and until the application configures a tracer
provider (the SDK's), every function here is a no-op that costs one check.

The submit's span context travels *in the job*: :func:`on_submit` stores the
W3C ``traceparent`` (and ``tracestate``) under the metadata key
:data:`TRACE_KEY`, so a worker in another process finds it. The first attempt's
span is a child of the submit's span; later attempts (retries, rescues) start
traces of their own and carry a *link* to it, so a job retried for hours does
not grow one endless trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Final

from ._records import Job

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

#: The metadata key holding a job's trace context (``{"traceparent": ...}``).
TRACE_KEY: Final = "trace_context"
_SCOPE = "trio_jobs"
_NOTHING = contextlib.nullcontext()


def on_submit(job: Job[Any]) -> None:
    """Record a PRODUCER span for submitting ``job`` and store its context in the job.

    Mutates ``job.metadata`` (a dict the caller just built for this job) only when
    a recording tracer is configured.
    """
    tracer = _tracer()
    if tracer is None:
        return
    with tracer.start_as_current_span(
        f"publish {job.type}",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "trio_jobs",
            "messaging.operation.type": "send",
            "messaging.destination.name": job.type,
            "messaging.message.id": job.id,
        },
    ) as span:
        if not span.get_span_context().is_valid:
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            job.metadata[TRACE_KEY] = carrier  # type: ignore[index]


def attempt_span(job: Job[Any]) -> contextlib.AbstractContextManager[Any]:
    """A CONSUMER span around one attempt of ``job`` (a no-op context without OTel)."""
    tracer = _tracer()
    if tracer is None:
        return _NOTHING
    return _attempt_span(tracer, job)


def _tracer() -> Any:
    """This library's tracer, or ``None`` when no tracer provider is configured.

    Until the application sets one, the API hands out a proxy whose spans record
    nothing; skipping them then keeps ``submit`` and attempts at full speed.
    """
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    return provider.get_tracer(_SCOPE)


@contextlib.contextmanager
def _attempt_span(tracer: Any, job: Job[Any]) -> Iterator[Any]:
    carrier = job.metadata.get(TRACE_KEY) if isinstance(job.metadata, dict) else None
    producer = None
    if isinstance(carrier, dict):
        producer = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        if not producer.is_valid:
            producer = None
    first = job.attempts <= 1
    links = [trace.Link(producer)] if producer is not None else []
    # The first attempt continues the submit's trace; a retry is a new root, linked.
    parent = (
        trace.set_span_in_context(trace.NonRecordingSpan(producer))
        if producer is not None and first
        else otel_context.Context()
    )
    with tracer.start_as_current_span(
        f"process {job.type}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "trio_jobs",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.type,
            "messaging.message.id": job.id,
            "trio_jobs.attempt": job.attempts,
        },
    ) as span:
        yield span
