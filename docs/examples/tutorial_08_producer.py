"""Tutorial step 8: a producer that submits to the worker started with ``trio-jobs worker``."""

from __future__ import annotations

import trio

from trio_jobs import JobClient, JobPriority, SQLiteStorage


async def main(path: str = "jobs.db") -> None:
    async with JobClient(SQLiteStorage(path)) as client:
        handles = [
            await client.submit("resize", {"image": "dog.jpg", "width": width})
            for width in (160, 320, 640)
        ]
        email = await client.submit(
            "send-email", {"to": "ada@example.com"}, priority=JobPriority.HIGH
        )
        print("submitted", len(handles) + 1, "jobs; waiting for a worker to run them")
        # wait() polls the file until the worker has finished the job.
        for handle in handles:
            print("resized:", (await handle.wait())["path"])
        print("email sent:", await email.wait())


if __name__ == "__main__":
    trio.run(main)
