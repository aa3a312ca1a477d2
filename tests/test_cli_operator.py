"""An operator is never misled (issue 17): the ``trio-jobs`` command, run as a subprocess.

A broken store stops a worker with one line and exit status 3; read commands
write nothing and say what they read; jobs nobody can run are flagged; the
worker's summary counts jobs; ids may be shortened; ``list --follow`` prints
changes as they happen.
"""

from __future__ import annotations

import io
import logging
import re
import signal
import sqlite3
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from conftest import PG_DSN
from test_cli import assert_ok, assert_one_line_error, cli, cli_many
from trio_jobs import Job, JobClient, JobStatus, PostgresStorage, SQLiteStorage
from trio_jobs.cli import _worker
from worker_apps import Worker, cli_command, cli_env

DEADLINE = 60.0  # seconds of real time a condition may take; never asserted on


@pytest.fixture
async def db(tmp_path: Path) -> str:
    path = str(tmp_path / "jobs.db")
    async with SQLiteStorage(path):
        pass
    return path


async def corrupt_database(path: Path) -> None:
    """Fill a database with jobs, then overwrite one 4 KiB page of its table."""
    async with JobClient(SQLiteStorage(path)) as client:
        await client.storage.update(Job(id="f" * 32, type="echo"))
        for n in range(300):
            await client.submit("echo", {"n": n, "pad": "x" * 200})
    data = bytearray(await trio.Path(path).read_bytes())
    data[4096 * 3 : 4096 * 4] = b"\xa5" * 4096
    await trio.Path(path).write_bytes(bytes(data))


def schema_exists(schema: str) -> bool:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,))
        return bool(row.fetchone()[0])  # type: ignore[index]


# -- 1. a broken store -------------------------------------------------------------------------


async def test_a_corrupt_database_stops_the_worker_with_one_line_and_exit_status_3(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broken.db"
    await corrupt_database(path)

    worker, submit = await cli_many(
        [
            ("worker", "worker_apps:HANDLERS", "--db", str(path), "--log-level", "ERROR"),
            ("submit", "echo", "--db", str(path)),
        ],
        cwd=tmp_path,
    )

    # Not a traceback a second forever: one line, and a status that says "look at the store".
    assert_one_line_error(worker, 3, f"worker stopped: SQLite database {path} is corrupt")
    assert_one_line_error(submit, 3, "is corrupt: database disk image is malformed")


# -- 2 and 3. no black holes, and reading writes nothing ----------------------------------------


async def test_read_commands_leave_other_files_as_they_were_and_create_nothing(
    tmp_path: Path,
) -> None:
    theirs = tmp_path / "theirs.db"
    conn = sqlite3.connect(theirs)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    empty = tmp_path / "empty.db"
    await trio.Path(empty).write_bytes(b"")
    before = await trio.Path(theirs).read_bytes()

    commands = [
        (command, *args, "--db", str(path))
        for path in (theirs, empty)
        for command, *args in (
            ("list",),
            ("stats",),
            ("workers",),
            ("schedules",),
            ("show", "abcd"),
        )
    ]
    results = await cli_many([*commands, ("submit", "echo", "--db", str(empty))], cwd=tmp_path)

    for result in results:
        assert_one_line_error(result, 3, "is not a trio_jobs SQLite database")
    assert await trio.Path(theirs).read_bytes() == before
    assert await trio.Path(empty).read_bytes() == b""
    names = sorted(p.name for p in await trio.Path(tmp_path).iterdir())
    assert names == ["empty.db", "theirs.db"]


async def test_postgres_read_commands_neither_create_nor_migrate_a_schema(
    tmp_path: Path, pg_schema: str
) -> None:
    store = ("--dsn", PG_DSN, "--schema", pg_schema)
    results = await cli_many(
        [
            ("list", *store),
            ("stats", *store),
            ("schedules", *store),
            ("submit", "echo", *store),
        ],
        cwd=tmp_path,
    )
    for result in results:
        assert_one_line_error(result, 3, f"no trio_jobs schema named '{pg_schema}' here")
    assert not await trio.to_thread.run_sync(schema_exists, pg_schema)

    assert_ok(await cli("migrate", *store, cwd=tmp_path))
    listed = assert_ok(await cli("list", *store, cwd=tmp_path))
    assert listed.stdout.startswith(f"PostgreSQL schema {pg_schema}, newest first:")


async def test_stats_and_list_flag_waiting_jobs_that_no_live_worker_handles(
    tmp_path: Path, db: str
) -> None:
    async with JobClient(SQLiteStorage(db)) as client:
        for _ in range(2):
            await client.submit("send-emial", None)  # a typo nobody handles
        await client.submit("echo", None)
    worker = Worker({"kind": "sqlite", "path": db}, cwd=tmp_path, log_dir=tmp_path)
    try:
        # The worker warns, at start, of the jobs it (and every live worker) cannot run.
        with trio.fail_after(DEADLINE):
            while "no live worker handles" not in worker.stderr():  # noqa: ASYNC110
                await trio.sleep(0.05)
        stats, stats_json, listed = await cli_many(
            [("stats", "--db", db), ("stats", "--db", db, "--json"), ("list", "--db", db)],
            cwd=tmp_path,
        )
    finally:
        worker.signal(signal.SIGINT)
        await worker.wait()
        worker.close()
    line = "2 waiting jobs (2 of type 'send-emial') that no live worker handles"
    assert re.search(rf"WARNING +{re.escape(line)}", worker.stderr())
    assert f"warning: {line}" in assert_ok(stats).stdout
    assert f"warning: {line}" in assert_ok(listed).stdout
    assert assert_ok(stats_json).json()["unhandled"] == {"send-emial": 2}


# -- 5. the worker's summary, and progress after a forced stop ----------------------------------


async def test_a_forced_stop_is_summarised_by_jobs_and_resets_their_progress(
    tmp_path: Path, db: str
) -> None:
    worker = Worker(
        {"kind": "sqlite", "path": db}, cwd=tmp_path, log_dir=tmp_path,
        app="worker_apps:PROGRESS_HANDLERS", options=("--poll-interval", "0.1"),
    )  # fmt: skip
    try:
        async with JobClient(SQLiteStorage(db)) as client:
            ids = [(await client.submit("halfway", {"seconds": 600})).id for _ in range(3)]
            with trio.fail_after(DEADLINE):
                while True:
                    jobs = [await client.get_job(job_id) for job_id in ids]
                    if all(j is not None and j.progress == 60 for j in jobs):
                        break
                    await trio.sleep(0.05)
            worker.signal(signal.SIGINT)
            with trio.fail_after(DEADLINE):
                while "send it again to force" not in worker.stderr():  # noqa: ASYNC110
                    await trio.sleep(0.05)
            worker.signal(signal.SIGINT)
            assert await worker.wait() == 0
            after = [await client.get_job(job_id) for job_id in ids]
    finally:
        worker.close()
    assert "worker stopped: 3 interrupted jobs back to pending" in worker.stderr()
    for job in after:
        assert job is not None
        assert (job.status, job.attempts, job.progress) == (JobStatus.PENDING, 0, None)


# -- 6. gaps in the command line ----------------------------------------------------------------


async def test_version_metadata_tenant_and_timeouts(tmp_path: Path, db: str) -> None:
    version, tagged, huge, unlimited, none = await cli_many(
        [
            ("--version",),
            ("submit", "echo", "--metadata", '{"source": "cli"}', "--tenant", "acme", "--db", db),
            ("submit", "echo", "--timeout", "1e3", "--db", db, "--json"),
            ("submit", "echo", "--timeout", "inf", "--db", db, "--json"),
            ("submit", "echo", "--timeout", "none", "--db", db, "--json"),
        ],
        cwd=tmp_path,
    )
    assert re.fullmatch(r"trio-jobs \S+\n", assert_ok(version).stdout)
    async with JobClient(SQLiteStorage(db)) as client:
        job = await client.get_job(assert_ok(tagged).stdout.strip())
    assert job is not None
    assert (job.metadata, job.tenant_id) == ({"source": "cli"}, "acme")
    assert assert_ok(huge).json()["timeout"] == 1000.0
    # Every spelling of "no limit" is the same, and a large finite number is a limit.
    assert assert_ok(unlimited).json()["timeout"] == assert_ok(none).json()["timeout"]


async def test_mistakes_of_issue_17_are_one_line_with_the_right_status(
    tmp_path: Path, db: str
) -> None:
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("stats", "--dsn", PG_DSN, "--schema", "NewUser_Probe"), 2, "use 'newuser_probe'"),
        (("stats", "--dsn", PG_DSN, "--schema", ""), 2, "--schema must not be empty"),
        (("stats", "--dsn", PG_DSN, "--schema", "a-b"), 2, "is not a schema name"),
        (("purge", "--older-than", "-1d", "--db", db), 2, "cannot be negative, got '-1d'"),
        (("submit", "echo", "--delay", "-5", "--db", db), 2, "cannot be negative"),
        (("submit", "echo", "--timeout", "1e999", "--db", db), 2, "too large"),
        (("submit", "echo", "--metadata", "[1]", "--db", db), 2, "must be a JSON object"),
        (("submit", "echo", "--metadata", "{", "--db", db), 2, "invalid JSON --metadata"),
        (("worker", "worker_apps:echo", "--db", db), 1, "looks like a handler (job, ctx)"),
        (("show", "abc", "--db", db), 1, "at least 4 characters"),
    ]
    results = await cli_many([args for args, _, _ in cases], cwd=tmp_path)
    wrong = []
    for (args, code, fragment), result in zip(cases, results, strict=True):
        try:
            assert_one_line_error(result, code, fragment)
        except AssertionError as exc:
            wrong.append(f"{' '.join(args)!r}: {exc}")
    assert not wrong, "\n".join(wrong)
    assert not await trio.to_thread.run_sync(schema_exists, "NewUser_Probe")


async def test_an_id_may_be_shortened_to_a_unique_prefix(tmp_path: Path, db: str) -> None:
    first, second = "6cd881ea" + "0" * 24, "6cd881eb" + "0" * 24
    async with JobClient(SQLiteStorage(db)) as client:
        for job_id in (first, second):
            await client.storage.update(Job(id=job_id, type="echo"))
    shown, ambiguous, cancelled = await cli_many(
        [
            ("show", "6cd881ea", "--db", db, "--json"),
            ("show", "6cd881e", "--db", db),
            ("cancel", "6cd881eb", "--db", db),
        ],
        cwd=tmp_path,
    )
    assert assert_ok(shown).json()["id"] == first
    assert_one_line_error(ambiguous, 1, "id prefix '6cd881e' is ambiguous")
    assert first in ambiguous.stderr
    assert second in ambiguous.stderr
    assert assert_ok(cancelled).stdout.strip() == f"cancelled job {second}"


async def test_list_says_when_it_cut_the_list_and_when_waiting_jobs_run(
    tmp_path: Path, db: str
) -> None:
    async with JobClient(SQLiteStorage(db)) as client:
        await client.submit("echo", None)
        later = (await client.submit("echo", None, delay=3600)).id
    table, as_json = await cli_many(
        [("list", "--db", db), ("list", "--db", db, "--limit", "1", "--json")], cwd=tmp_path
    )
    rows = assert_ok(table).stdout.splitlines()[2:4]
    assert re.search(rf"^{later} .* in 59m\d\ds ", rows[0]), rows
    assert re.search(r" due ", rows[1]), rows
    assert [job["id"] for job in assert_ok(as_json).json()] == [later]
    assert "showing the newest 1 jobs; more match (raise --limit)" in as_json.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_list_follow_prints_changes_as_they_happen(
    tmp_path: Path, db: str, pg_schema: str, kind: str
) -> None:
    if kind == "sqlite":
        storage: Any = SQLiteStorage(db)
        where = ["--db", db]
    else:
        storage = PostgresStorage(PG_DSN, schema=pg_schema)
        where = ["--dsn", PG_DSN, "--schema", pg_schema]
    async with JobClient(storage) as client, trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                cli_command("list", "--follow", *where),
                cwd=tmp_path,
                env=cli_env(),
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        seen = io.StringIO()

        async def read_until(text: str) -> None:
            with trio.fail_after(DEADLINE):
                while text not in seen.getvalue():
                    seen.write((await process.stdout.receive_some()).decode())

        await read_until("following changes")
        job_id = (await client.submit("echo", {"live": True})).id
        await read_until(f"{job_id}  echo  pending")
        assert await client.cancel(job_id)
        await read_until(f"{job_id}  echo  cancelled")
        process.send_signal(signal.SIGINT)
        with trio.fail_after(DEADLINE):
            assert await process.wait() == 0


# -- 4. logging ---------------------------------------------------------------------------------


def test_the_worker_formats_psycopg_lines_and_quiets_its_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger, handler = _worker._configure_logging("INFO")
    try:
        logging.getLogger("psycopg.pool").warning("discarding closed connection: <BAD>")
        logging.getLogger("psycopg").warning("server says hello")
    finally:
        for name in ("trio_jobs", "psycopg"):
            logging.getLogger(name).removeHandler(handler)
        logging.getLogger("psycopg").propagate = True
        logging.getLogger("psycopg.pool").setLevel(logging.NOTSET)
        logger.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "discarding closed connection" not in err
    assert re.search(r"^\S+ \S+ WARNING +server says hello$", err, re.M)
