"""Tutorial step 9: many workers on PostgreSQL.

Start a few workers first (each in its own terminal, or on other machines)::

    export TRIO_JOBS_DSN=postgresql://postgres@127.0.0.1:5432/test
    trio-jobs migrate
    trio-jobs worker tutorial_08_handlers:HANDLERS

then run this producer: ``python tutorial_09_postgres.py``.
"""

from __future__ import annotations

import os
from collections import Counter

import trio

from trio_jobs import JobClient, PostgresStorage


async def main(dsn: str | None = None, schema: str | None = None) -> None:
    # The same settings as the `trio-jobs` command, so that both use one queue.
    dsn = dsn or os.environ["TRIO_JOBS_DSN"]
    schema = schema or os.environ.get("TRIO_JOBS_SCHEMA", "trio_jobs")
    async with JobClient(PostgresStorage(dsn, schema=schema)) as client:
        handles = [
            await client.submit("resize", {"image": f"photo-{n}.jpg", "width": 640})
            for n in range(20)
        ]
        print(f"submitted {len(handles)} jobs")
        results = [await handle.wait() for handle in handles]
        stats = await client.stats()
    by_worker = Counter(result["worker_pid"] for result in results)
    print(f"{len(results)} images resized by {len(by_worker)} worker process(es)")
    for pid, count in sorted(by_worker.items()):
        print(f"  pid {pid}: {count} jobs")
    print(f"completed: {stats.completed}, failed: {stats.failed}")


if __name__ == "__main__":
    trio.run(main)
