"""What the runner does when its store fails (issue 17): stop on a broken store, wait out the rest.

A :class:`StorageCorruptError` (a damaged file, another program's database) will not
pass: the runner stops claiming at once and its block ends with that error, instead
of logging a traceback every poll forever. Any other store error may pass: the
claim loop backs off, doubling its pause up to half a minute, and logs one line,
not a traceback per poll. Time is the Trio clock (``autojump_clock``).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from faulty_storage import FaultyStorage
from trio_jobs import (
    Job,
    JobContext,
    JobRunner,
    MemoryStorage,
    SQLiteStorage,
    StorageCorruptError,
    StorageError,
    StorageUnavailableError,
)


async def echo(job: Job[Any], ctx: JobContext[Any]) -> Any:
    await trio.lowlevel.checkpoint()
    return job.payload


def corrupt() -> StorageCorruptError:
    return StorageCorruptError("SQLite database x.db is corrupt: database disk image is malformed")


async def run_forever(storage: Any, *, submit: bool = False) -> None:
    """Run a runner with an ``echo`` handler until its block ends by an error."""
    async with JobRunner(storage=storage, poll_interval=1.0) as runner:
        runner.register_handler("echo", echo)
        if submit:
            await runner.submit("echo", 1)
        await trio.sleep_forever()


async def read_everything(path: Path) -> None:
    async with SQLiteStorage(path) as store:
        await store.list_jobs()
        for n in range(50):
            await store.get(f"{n:032x}")


def test_storage_errors_say_whether_they_may_pass_and_keep_their_old_bases() -> None:
    assert issubclass(StorageCorruptError, StorageError)
    assert issubclass(StorageUnavailableError, StorageError)
    assert issubclass(StorageCorruptError, ValueError)
    assert issubclass(StorageUnavailableError, OSError)
    assert StorageCorruptError("x").transient is False
    assert StorageUnavailableError("x").transient is True


async def test_a_corrupt_store_ends_the_runner_with_the_error_unwrapped(
    autojump_clock: trio.abc.Clock,
) -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail("claim", corrupt)
    with pytest.raises(StorageCorruptError, match="malformed"):
        await run_forever(faulty)
    # It did not try again: one claim, then the runner stopped.
    assert len(faulty.calls_to("claim")) == 1


async def test_a_corrupt_store_found_by_a_settle_ends_the_runner_without_waiting_for_the_lease(
    autojump_clock: trio.abc.Clock,
) -> None:
    faulty = FaultyStorage(MemoryStorage(lease_duration=30.0))
    faulty.fail("settle", corrupt)
    with pytest.raises(StorageCorruptError):
        await run_forever(faulty, submit=True)
    assert trio.current_time() < 30.0
    assert len(faulty.calls_to("settle")) >= 1


async def test_a_damaged_sqlite_file_is_a_storage_corrupt_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SQLiteStorage(path) as store:
        for _ in range(50):
            await store.save(Job(id=f"{_:032x}", type="echo", payload="x" * 500))
    data = bytearray(await trio.Path(path).read_bytes())
    data[4096 * 3 : 4096 * 4] = b"\xa5" * 4096  # one page of the table, not the schema
    await trio.Path(path).write_bytes(bytes(data))

    with pytest.raises(StorageCorruptError, match=r"is corrupt: database disk image") as info:
        await read_everything(path)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_a_transient_claim_failure_backs_off_and_logs_one_line(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail("claim", lambda: OSError("server closed the connection"), times=5)
    logger = logging.getLogger("test_store_errors")
    with caplog.at_level(logging.DEBUG, logger="test_store_errors"):
        async with JobRunner(storage=faulty, poll_interval=1.0, logger=logger) as runner:
            runner.register_handler("echo", echo)
            handle = await runner.submit("echo", "hi")
            assert await handle.wait() == "hi"
    # Pauses of 1, 2, 4, 8 and 16 seconds: doubling from poll_interval.
    assert trio.current_time() >= 31.0
    failures = [r for r in caplog.records if "claiming jobs failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.WARNING
    assert failures[0].exc_info is None
    assert "OSError: server closed the connection" in failures[0].getMessage()
    assert any("works again after 5 failures" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_rescue_is_logged_with_the_lost_worker_and_the_jobs_new_status(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStorage(lease_duration=5.0)
    await store.save(Job(id="lost-job", type="echo"))
    assert [job.id for job in await store.claim("dead-worker", 1)] == ["lost-job"]
    logger = logging.getLogger("test_store_errors.rescue")
    with caplog.at_level(logging.WARNING, logger="test_store_errors.rescue"):
        async with JobRunner(storage=store, poll_interval=1.0, logger=logger) as runner:
            runner.register_handler("echo", echo)
            handle = await runner.get_handle("lost-job")
            await handle.wait()
    (line,) = [r.getMessage() for r in caplog.records if "rescued" in r.getMessage()]
    assert "lost-job echo" in line
    assert "dead-worker" in line
    assert line.endswith("now pending")
