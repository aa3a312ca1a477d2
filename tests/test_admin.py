"""list_jobs, retry and purge on JobClient and JobRunner: the CLI's admin, as an API."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobClient,
    JobContext,
    JobFailedError,
    JobRunner,
    JobStatus,
    RetryConfig,
)

NO_RETRY = RetryConfig(max_attempts=1)


async def test_list_retry_and_purge_from_a_client_and_a_runner(store_factory: Any) -> None:
    fail = {"yes": True}

    async def fickle(job: Job[Any], ctx: JobContext[Any]) -> str:
        await trio.lowlevel.checkpoint()
        if fail["yes"]:
            raise ValueError("invalid input")
        return f"done {job.payload}"

    async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return job.payload

    with trio.fail_after(60):
        async with JobRunner(
            storage=store_factory(), default_retry=NO_RETRY, poll_interval=0.05
        ) as runner:
            runner.register_handler("fickle", fickle)
            runner.register_handler("echo", echo)
            broken = await runner.submit("fickle", 1)
            with pytest.raises(JobFailedError):
                await broken.wait()
            fine = [await runner.submit("echo", i) for i in range(3)]
            for handle in fine:
                await handle.wait()

            async with JobClient(store_factory()) as client:
                for source in (runner, client):
                    listed = await source.list_jobs()
                    assert [j.id for j in listed] == [h.id for h in reversed([broken, *fine])]
                    failed = await source.list_jobs(status=JobStatus.FAILED)
                    assert [j.id for j in failed] == [broken.id]
                    assert [j.id for j in await source.list_jobs(status="failed")] == [broken.id]
                    echoes = await source.list_jobs(job_type="echo", limit=2)
                    assert [j.payload for j in echoes] == [2, 1]
                    assert await source.list_jobs(job_type="nope") == []

                assert await client.retry(fine[0].id) is False  # completed: nothing to retry
                assert await client.retry("no-such-job") is False
                fail["yes"] = False
                assert await client.retry(broken.id) is True
                assert await client.retry(broken.id) is False  # pending now
                await runner.join()
                job = await client.get_job(broken.id)
                assert job is not None
                assert (job.status, job.result, job.attempts) == (
                    JobStatus.COMPLETED,
                    "done 1",
                    1,
                )

                assert await client.purge(older_than=3600) == 0
                assert await runner.purge(statuses=[JobStatus.FAILED]) == 0
                assert await client.purge(statuses=[JobStatus.COMPLETED], older_than=0) == 4
                assert await runner.list_jobs() == []


async def test_runner_retry_runs_a_failed_job_again() -> None:
    attempts: list[int] = []

    async def once_broken(job: Job[Any], ctx: JobContext[Any]) -> int:
        await trio.lowlevel.checkpoint()
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise ValueError("invalid input")
        return len(attempts)

    async with JobRunner(default_retry=NO_RETRY) as runner:
        runner.register_handler("w", once_broken)
        handle = await runner.submit("w")
        with pytest.raises(JobFailedError):
            await handle.wait()
        assert await runner.retry(handle.id) is True
        assert await handle.wait() == 2
    assert attempts == [1, 1]


@pytest.mark.parametrize(
    ("call", "error", "argument"),
    [
        ({"status": "sleeping"}, ValueError, "status"),
        ({"job_type": 3}, TypeError, "job_type"),
        ({"limit": -1}, ValueError, "limit"),
        ({"limit": "10"}, TypeError, "limit"),
    ],
)
async def test_list_jobs_checks_its_arguments(
    call: dict[str, Any], error: type[Exception], argument: str
) -> None:
    async with JobRunner() as runner:
        with pytest.raises(error, match=argument):
            await runner.list_jobs(**call)


@pytest.mark.parametrize(
    ("call", "error", "argument"),
    [
        ({"older_than": -1.0}, ValueError, "older_than"),
        ({"older_than": float("nan")}, ValueError, "older_than"),
        ({"statuses": [JobStatus.PENDING]}, ValueError, "statuses"),
        ({"statuses": ["gone"]}, ValueError, "statuses"),
        ({"statuses": "completed"}, TypeError, "statuses"),
    ],
)
async def test_purge_checks_its_arguments(
    call: dict[str, Any], error: type[Exception], argument: str
) -> None:
    async with JobRunner() as runner:
        with pytest.raises(error, match=argument):
            await runner.purge(**call)
