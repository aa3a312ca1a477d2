"""Typed examples of the runner API, checked by ``mypy --strict`` (never run by pytest).

``assert_type`` proves what the public types promise: ``register_handler`` and
``@runner.handler`` return the handler unchanged (its own signature, not a looser
one), the context and handle carry the documented types, and ``subscribe()`` yields
a channel of ``RunnerEvent``. The ``type: ignore`` lines prove that wrong calls are
errors: with ``warn_unused_ignores`` (part of ``--strict``), an ignore that suppresses
nothing is itself an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, assert_type

import trio

from trio_jobs import (
    Job,
    JobClient,
    JobContext,
    JobHandle,
    JobPriority,
    JobRunner,
    JobStats,
    MemoryStorage,
    RetryConfig,
    RunnerEvent,
)

Payload = dict[str, int]

runner = JobRunner(concurrency=4, default_timeout=30.0, default_retry=RetryConfig(jitter=False))


async def resize(job: Job[Payload], ctx: JobContext[Payload]) -> bytes:
    assert_type(job.payload, Payload)
    assert_type(ctx.job, Job[Payload])
    assert_type(ctx.attempt, int)
    assert_type(ctx.deadline, float)
    assert_type(ctx.cancelled, bool)
    assert_type(ctx.cancel_scope, trio.CancelScope)
    assert_type(ctx.log, logging.LoggerAdapter[logging.Logger])
    ctx.log.info("resizing to %d px", job.payload["width"])
    ctx.report_progress(50.0, "half way")
    ctx.update_metadata({"width": job.payload["width"]})
    return b"png"


# register_handler returns the handler itself, with its exact type.
registered = runner.register_handler("resize", resize)


@runner.handler("count")
async def count(job: Job[list[int]], ctx: JobContext[list[int]]) -> int:
    return len(job.payload)


async def handlers_keep_their_exact_signature(
    job: Job[Payload],
    ctx: JobContext[Payload],
    numbers: Job[list[int]],
    numbers_ctx: JobContext[list[int]],
    words: Job[str],
) -> None:
    # Parameter names, payload types and the result type all survive registration.
    assert_type(await registered(job=job, ctx=ctx), bytes)
    pending = count(numbers, numbers_ctx)
    _ = assert_type(pending, Coroutine[Any, Any, int])
    pending.close()
    await registered(words, ctx)  # type: ignore[arg-type]


def on_completed(job: Job[Any], result: Any) -> None:
    print(job.id, result)


def on_retrying(job: Job[Any], attempt: int, delay: float) -> None:
    print(f"{job.id}: attempt {attempt} failed, retrying in {delay:.1f}s")


async def main() -> None:
    async with runner as entered:
        assert_type(entered, JobRunner)
        assert_type(runner.running, bool)

        handle = await runner.submit(
            "resize",
            {"width": 640},
            priority=JobPriority.HIGH,
            retry={"max_attempts": 5},
            timeout=math.inf,
            delay=1.5,
            metadata={"user": "ada"},
            tenant_id="acme",
        )
        assert_type(handle, JobHandle[Any])
        assert_type(handle.id, str)
        assert_type(handle.type, str)
        # A caller that knows the result type may say so.
        typed: JobHandle[bytes] = handle
        assert_type(await typed.wait(), bytes)
        assert_type(await handle.get_status(), Job[Any])
        assert_type(await handle.is_done(), bool)
        assert_type(await handle.cancel(), bool)

        assert_type(await runner.get_job(handle.id), Job[Any] | None)
        assert_type(await runner.get_handle(handle.id), JobHandle[Any])
        assert_type(await runner.cancel(handle.id), bool)
        assert_type(await runner.stats(), JobStats)
        await runner.join()

        unsubscribe = runner.on("job:completed", on_completed)
        assert_type(unsubscribe, Callable[[], None])
        unsubscribe()
        runner.on("job:retrying", on_retrying)
        runner.off("job:retrying", on_retrying)

        subscription = runner.subscribe(max_buffer_size=100)
        assert_type(
            subscription,
            AbstractAsyncContextManager[trio.MemoryReceiveChannel[RunnerEvent]],
        )
        async with subscription as events:
            async for event in events:
                assert_type(event, RunnerEvent)
                break

        await runner.stop(graceful=False)


async def client_side() -> None:
    async with JobClient(MemoryStorage()) as client:
        handle = await client.submit("resize", {"width": 320}, priority=JobPriority.LOW)
        assert_type(handle, JobHandle[Any])
        assert_type(await client.get_job(handle.id), Job[Any] | None)
        assert_type(await client.get_handle(handle.id), JobHandle[Any])
        assert_type(await client.cancel(handle.id), bool)
        assert_type(await client.stats(), JobStats)


def sync_handler(job: Job[Any], ctx: JobContext[Any]) -> int:
    return 1


def plain_def_handlers_are_accepted() -> None:
    registered = runner.register_handler("sync", sync_handler)  # runs in a worker thread
    assert registered is sync_handler


async def wrong_calls_are_type_errors() -> None:
    JobRunner(4)  # type: ignore[call-arg]
    JobRunner(concurrency="4")  # type: ignore[arg-type]
    JobRunner(default_retry={"max_attempts": 2})  # type: ignore[arg-type]
    await runner.submit("resize", None, JobPriority.HIGH)  # type: ignore[call-arg]
    await runner.submit("resize", priority="high")  # type: ignore[arg-type]
    await runner.submit("resize", delay="1s")  # type: ignore[arg-type]
    await runner.submit("resize", retries=3)  # type: ignore[call-arg]
    await runner.stop(force=True)  # type: ignore[call-arg]
