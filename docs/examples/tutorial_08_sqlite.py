"""Tutorial step 8: jobs that outlive the process, in an SQLite file."""

from __future__ import annotations

import trio
from tutorial_08_handlers import setup

from trio_jobs import JobClient, JobRunner, SQLiteStorage


async def enqueue(path: str) -> list[str]:
    """Submit jobs without running them: a JobClient has no handlers."""
    async with JobClient(SQLiteStorage(path)) as client:
        handles = [
            await client.submit("resize", {"image": "cat.jpg", "width": width})
            for width in (320, 640)
        ]
        await client.submit("send-email", {"to": "ada@example.com"})
        try:
            await client.submit("send-email", {"to": {"ada@example.com"}})  # a set
        except TypeError as exc:
            print("not stored:", exc)
        stats = await client.stats()
        print(f"{stats.pending} jobs are waiting for a worker")
        return [handle.id for handle in handles]


async def work(path: str) -> None:
    """A later process: a runner on the same file runs what is waiting, then drains."""
    async with JobRunner(storage=SQLiteStorage(path)) as runner:
        setup(runner)
    print("the runner ran them all")


async def report(path: str, job_ids: list[str]) -> None:
    """Any process can read results by id."""
    async with JobClient(SQLiteStorage(path)) as client:
        for job_id in job_ids:
            handle = await client.get_handle(job_id)
            result = await handle.wait()
            print("result:", result["path"])
        stats = await client.stats()
        print(f"completed: {stats.completed}, pending: {stats.pending}")


async def main(path: str = "jobs.db") -> None:
    job_ids = await enqueue(path)
    await work(path)
    await report(path, job_ids)


if __name__ == "__main__":
    trio.run(main)
