"""The ``trio-jobs`` command, run as a user runs it: a subprocess per command.

The state commands inspect is prepared with the library in this process, on the
same real SQLite file (or PostgreSQL schema); every command under test runs as
``python -m trio_jobs ...`` with this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from conftest import PG_DSN
from trio_jobs import (
    JobClient,
    JobFailedError,
    JobPriority,
    JobRunner,
    JobStatus,
    PostgresStorage,
    SQLiteStorage,
)
from worker_apps import HANDLERS, Worker, cli_command, cli_env

ID = re.compile(r"[0-9a-f]{32}")


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def cli(
    *args: str,
    cwd: Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``trio-jobs ARGS`` in ``cwd`` and capture what it printed."""
    with trio.fail_after(60):
        done = await trio.run_process(
            cli_command(*args),
            cwd=cwd,
            env=cli_env(**(env or {})),
            stdin=None if stdin is None else stdin.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def cli_many(commands: Sequence[tuple[str, ...]], *, cwd: Path) -> list[Result]:
    """Run independent commands two at a time (the machine has two cores)."""
    results: list[Result | None] = [None] * len(commands)
    limiter = trio.CapacityLimiter(2)

    async def run(i: int, args: tuple[str, ...]) -> None:
        async with limiter:
            results[i] = await cli(*args, cwd=cwd)

    async with trio.open_nursery() as nursery:
        for i, args in enumerate(commands):
            nursery.start_soon(run, i, args)
    return [r for r in results if r is not None]


def assert_ok(result: Result) -> Result:
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-jobs: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
async def db(tmp_path: Path) -> str:
    """An SQLite database with trio_jobs tables (as a worker or `migrate` leaves it)."""
    path = str(tmp_path / "jobs.db")
    async with SQLiteStorage(path):
        pass
    return path


async def run_jobs(db: str, submissions: Sequence[tuple[str, Any, dict[str, Any]]]) -> list[str]:
    """Submit jobs and run them to the end with an in-process runner on ``db``."""
    ids = []
    async with JobRunner(storage=SQLiteStorage(db), poll_interval=0.05) as runner:
        for job_type, handler in HANDLERS.items():
            runner.register_handler(job_type, handler)
        for job_type, payload, options in submissions:
            ids.append((await runner.submit(job_type, payload, **options)).id)
    return ids


# -- help ------------------------------------------------------------------------------------


async def test_help_names_every_command_and_the_worker_documents_both_app_forms(
    tmp_path: Path,
) -> None:
    top, worker = await cli_many([("--help",), ("worker", "--help")], cwd=tmp_path)
    assert_ok(top)
    for command in ("worker", "submit", "list", "show", "stats", "cancel", "retry", "purge"):
        assert command in top.stdout
    assert "migrate" in top.stdout
    assert "demo" in top.stdout
    assert_ok(worker)
    assert "module:attribute" in worker.stdout
    assert "HANDLERS" in worker.stdout
    assert "setup(runner)" in worker.stdout
    assert "--lease-duration" in worker.stdout


async def test_console_script_imports_the_app_from_the_current_directory(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("trio-jobs")
    if not await trio.Path(script).exists():
        pytest.skip("the trio-jobs console script is not installed next to this Python")
    await trio.Path(tmp_path / "shop.py").write_text("ORDERS = {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIO_JOBS_", "PYTHONPATH"))}
    with trio.fail_after(60):
        done = await trio.run_process(
            [str(script), "worker", "shop:MISSING", "--db", "jobs.db"],
            cwd=tmp_path,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    # The module was found in the current directory; only the attribute is missing.
    result = Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    assert_one_line_error(result, 1, "module 'shop' has no attribute 'MISSING'")


async def test_output_cut_short_by_a_closed_pipe_is_not_an_error(tmp_path: Path, db: str) -> None:
    await run_jobs(db, [("echo", i, {}) for i in range(50)])
    for command in ("list", "stats"):  # a long output, and one that fits in a buffer
        read_end, write_end = os.pipe()
        os.close(read_end)
        with trio.fail_after(60):
            done = await trio.run_process(
                cli_command(command, "--db", db),
                cwd=tmp_path,
                env=cli_env(),
                stdout=write_end,
                capture_stderr=True,
                check=False,
            )
        os.close(write_end)
        assert done.stderr == b""
        assert done.returncode == 141


# -- submit, list, show, stats ------------------------------------------------------------------


async def test_submit_prints_the_id_and_the_job_is_stored_as_asked(tmp_path: Path, db: str) -> None:
    plain = assert_ok(await cli("submit", "echo", '{"to": "ada"}', "--db", db, cwd=tmp_path))
    job_id = plain.stdout.strip()
    assert ID.fullmatch(job_id)
    detailed = assert_ok(
        await cli(
            "--db", db, "submit", "report", '[1, 2]', "--priority", "critical", "--delay", "1h",
            "--timeout", "90s", "--max-attempts", "5", "--json", cwd=tmp_path,
        )
    )  # fmt: skip
    record = detailed.json()
    piped = assert_ok(await cli("submit", "echo", "-", "--db", db, cwd=tmp_path, stdin='"hi"'))

    async with JobClient(SQLiteStorage(db)) as jobs:
        first = await jobs.get_job(job_id)
        second = await jobs.get_job(record["id"])
        third = await jobs.get_job(piped.stdout.strip())
    assert first is not None
    assert second is not None
    assert third is not None
    assert (first.type, first.payload, first.status) == ("echo", {"to": "ada"}, JobStatus.PENDING)
    assert first.priority is JobPriority.NORMAL
    assert second.payload == [1, 2]
    assert second.priority is JobPriority.CRITICAL
    assert second.max_attempts == 5
    assert second.timeout == 90
    assert second.run_at is not None
    assert (second.run_at - second.created_at).total_seconds() == pytest.approx(3600, abs=1)
    assert record["type"] == "report"
    assert record["priority"] == "critical"
    assert record["status"] == "pending"
    assert record["max_attempts"] == 5
    assert third.payload == "hi"


async def test_list_show_and_stats_as_tables_and_json(tmp_path: Path, db: str) -> None:
    ok, failed = await run_jobs(
        db,
        [
            ("echo", {"n": 1}, {}),
            ("explode", {"message": "disk on fire"}, {"retry": {"max_attempts": 1}}),
        ],
    )
    async with JobClient(SQLiteStorage(db)) as jobs:
        waiting = (await jobs.submit("later", None, priority=JobPriority.HIGH)).id

    (
        table, listed, by_status, by_type, limited, shown_ok, shown_failed, shown_json,
        stats, stats_json,
    ) = await cli_many(
        [
            ("list", "--db", db),
            ("list", "--db", db, "--json"),
            ("list", "--db", db, "--status", "FAILED", "--json"),
            ("list", "--db", db, "--type", "later", "--json"),
            ("list", "--db", db, "--limit", "1", "--json"),
            ("show", ok, "--db", db),
            ("show", failed, "--db", db),
            ("show", failed, "--db", db, "--json"),
            ("stats", "--db", db),
            ("--json", "--db", db, "stats"),
        ],
        cwd=tmp_path,
    )  # fmt: skip
    for result in (table, listed, by_status, by_type, limited, shown_ok, shown_failed, stats):
        assert_ok(result)

    store, header, *rows, note = table.stdout.splitlines()
    assert store == f"SQLite database {db}, newest first:"
    assert header.split() == [
        "ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED", "NEXT", "RUN", "DURATION",
        "PROGRESS",
    ]  # fmt: skip
    # Nothing runs "later" jobs: the list says so (a worker runs only its types).
    assert note.startswith("warning: 1 waiting job (1 of type 'later') that no live worker")
    assert len(rows) == 3
    assert {row.split()[0] for row in rows} == {ok, failed, waiting}
    # Aligned: every row's status starts in the header's STATUS column.
    column = header.index("STATUS")
    assert {row[column:].split()[0] for row in rows} == {"completed", "failed", "pending"}

    assert [job["id"] for job in listed.json()] == [waiting, failed, ok]  # newest first
    assert [job["id"] for job in by_status.json()] == [failed]
    assert [job["id"] for job in by_type.json()] == [waiting]
    assert [job["id"] for job in limited.json()] == [waiting]

    assert re.search(r"^status:\s+completed$", shown_ok.stdout, re.M)
    assert re.search(r'^result:\s+\{"n": 1\}$', shown_ok.stdout, re.M)
    assert re.search(r"^last error:\s+RuntimeError: disk on fire$", shown_failed.stdout, re.M)
    assert "traceback of the last error:" in shown_failed.stdout
    assert 'raise RuntimeError(job.payload.get("message", "boom"))' in shown_failed.stdout
    record = shown_json.json()
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["last_error"]["message"] == "disk on fire"
    assert "Traceback (most recent call last)" in record["last_error"]["traceback"]

    assert stats.stdout.startswith(f"SQLite database {db}:\n")
    assert re.search(r"^completed\s+1$", stats.stdout, re.M)
    assert re.search(r"^failed\s+1$", stats.stdout, re.M)
    assert re.search(r"^pending\s+1$", stats.stdout, re.M)
    counts = stats_json.json()
    assert (counts["completed"], counts["failed"], counts["pending"]) == (1, 1, 1)
    assert counts["total_processed"] == 2
    assert (counts["store"], counts["path"]) == ("sqlite", db)
    assert counts["unhandled"] == {"later": 1}


async def test_store_comes_from_the_environment_or_the_current_directory(tmp_path: Path) -> None:
    env_db = tmp_path / "from-env.db"
    # Only a worker or `migrate` creates a database; then jobs may be submitted.
    assert_ok(await cli("migrate", env={"TRIO_JOBS_DB": str(env_db)}, cwd=tmp_path))
    default = assert_ok(await cli("migrate", cwd=tmp_path))
    by_env = await cli("submit", "echo", env={"TRIO_JOBS_DB": str(env_db)}, cwd=tmp_path)
    by_default = await cli("submit", "echo", cwd=tmp_path)
    listed = await cli("list", "--json", "--db", str(env_db), cwd=tmp_path)
    assert [job["id"] for job in listed.json()] == [assert_ok(by_env).stdout.strip()]
    assert_ok(by_default)
    assert await trio.Path(tmp_path / "trio_jobs.db").exists()
    # The default depends on the working directory: the command says which file it used.
    assert default.stdout.startswith(f"SQLite database {tmp_path / 'trio_jobs.db'} is at")


# -- cancel, retry, purge, migrate --------------------------------------------------------------


async def test_cancel_a_waiting_job_then_refuse_to_cancel_it_again(tmp_path: Path, db: str) -> None:
    job_id = assert_ok(await cli("submit", "nap", '{"seconds": 1}', "--db", db, cwd=tmp_path))
    job_id = job_id.stdout.strip()
    first = assert_ok(await cli("cancel", job_id, "--db", db, "--json", cwd=tmp_path))
    assert first.json() == {"id": job_id, "outcome": "cancelled", "status": "cancelled"}
    again = await cli("cancel", job_id, "--db", db, cwd=tmp_path)
    assert_one_line_error(again, 1, "already cancelled")


async def test_cancel_a_running_job_asks_its_worker(tmp_path: Path, db: str) -> None:
    job_id = assert_ok(await cli("submit", "nap", '{"seconds": 60}', "--db", db, cwd=tmp_path))
    job_id = job_id.stdout.strip()
    async with JobClient(SQLiteStorage(db)) as jobs:
        claimed = await jobs.storage.claim("someone-else", 1)
        assert [job.id for job in claimed] == [job_id]
        result = assert_ok(await cli("cancel", job_id, "--db", db, cwd=tmp_path))
        assert (
            result.stdout.strip() == f"job {job_id} is running: its worker was asked to cancel it"
        )
        beat = await jobs.storage.heartbeat("someone-else", [job_id])
    assert beat.cancel_requested == {job_id}


async def test_retry_requeues_a_failed_job_with_fresh_attempts(tmp_path: Path, db: str) -> None:
    failed, done = await run_jobs(
        db,
        [("explode", {}, {"retry": {"max_attempts": 2, "base_delay": 0}}), ("echo", None, {})],
    )
    retried, refused = await cli_many(
        [("retry", failed, "--db", db, "--json"), ("retry", done, "--db", db)], cwd=tmp_path
    )
    record = assert_ok(retried).json()
    assert (record["id"], record["status"], record["attempts"]) == (failed, "pending", 0)
    assert_one_line_error(refused, 1, f"job {done} is completed")

    ran_again = await run_jobs(db, [])
    assert ran_again == []
    async with JobClient(SQLiteStorage(db)) as jobs:
        job = await jobs.get_job(failed)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.FAILED, 2)


async def test_purge_deletes_only_final_jobs_older_than_asked(tmp_path: Path, db: str) -> None:
    await run_jobs(db, [("echo", i, {}) for i in range(3)])
    pending = assert_ok(await cli("submit", "later", "--db", db, cwd=tmp_path)).stdout.strip()

    keep = assert_ok(await cli("purge", "--older-than", "7d", "--db", db, cwd=tmp_path))
    assert keep.stdout.strip() == "purged 0 jobs"
    purged = assert_ok(await cli("purge", "--older-than", "0s", "--db", db, "--json", cwd=tmp_path))
    assert purged.json() == {"purged": 3}
    left = assert_ok(await cli("list", "--db", db, "--json", cwd=tmp_path)).json()
    assert [job["id"] for job in left] == [pending]


async def test_migrate_creates_the_tables_and_prints_the_schema_version(
    tmp_path: Path, db: str
) -> None:
    text, data = await cli_many(
        [("migrate", "--db", db), ("migrate", "--db", db, "--json")], cwd=tmp_path
    )
    assert re.fullmatch(rf"SQLite database {re.escape(db)} is at schema version \d+\n", text.stdout)
    record = data.json()
    assert record["store"] == "sqlite"
    assert record["schema_version"] >= 1
    assert await trio.Path(db).exists()


async def test_postgres_via_dsn_or_environment(tmp_path: Path, pg_schema: str) -> None:
    dsn = ("--dsn", PG_DSN, "--schema", pg_schema)
    migrated = assert_ok(await cli("migrate", *dsn, "--json", cwd=tmp_path)).json()
    assert migrated == {
        "store": "postgres", "schema_version": migrated["schema_version"], "schema": pg_schema,
    }  # fmt: skip
    assert migrated["schema_version"] >= 1
    job_id = assert_ok(
        await cli("submit", "echo", '{"pg": true}', *dsn, cwd=tmp_path)
    ).stdout.strip()
    env = {"TRIO_JOBS_DSN": PG_DSN, "TRIO_JOBS_SCHEMA": pg_schema}
    shown = assert_ok(await cli("show", job_id, "--json", env=env, cwd=tmp_path)).json()
    assert shown["payload"] == {"pg": True}
    async with JobClient(PostgresStorage(PG_DSN, schema=pg_schema)) as jobs:
        job = await jobs.get_job(job_id)
    assert job is not None
    assert job.payload == {"pg": True}


# -- the worker command ---------------------------------------------------------------------------


async def test_worker_runs_jobs_logs_each_event_and_stops_on_sigint(
    tmp_path: Path, db: str
) -> None:
    store = {"kind": "sqlite", "path": db}
    worker = Worker(
        store, cwd=tmp_path, log_dir=tmp_path, app="worker_apps:setup",
        options=("--poll-interval", "0.1"),
    )  # fmt: skip
    try:
        async with JobClient(SQLiteStorage(db)) as jobs:
            handle = await jobs.submit("echo", {"hello": "world"})
            failing = await jobs.submit(
                "explode", {"message": "nope"}, retry={"max_attempts": 2, "base_delay": 0}
            )
            with trio.fail_after(60):
                assert await handle.wait() == {"hello": "world"}
                with pytest.raises(JobFailedError):
                    await failing.wait()
                worker.signal(signal.SIGINT)
                code = await worker.wait()
    finally:
        worker.close()
    assert code == 0
    log = worker.stderr()
    assert "Traceback" not in log
    assert re.search(rf"INFO +job {handle.id} echo attempt 1/3 started$", log, re.M)
    assert re.search(rf"job {handle.id} echo attempt 1/3 completed in \S+$", log, re.M)
    assert re.search(
        rf"job {failing.id} explode attempt 1/2 failed, retrying in \S+: RuntimeError: nope$",
        log,
        re.M,
    )
    assert re.search(
        rf"job {failing.id} explode attempt 2/2 failed for good: RuntimeError: nope$", log, re.M
    )
    assert "SIGINT: stopping after the running jobs finish" in log
    assert (
        "worker stopped: 2 jobs finished (1 completed, 1 failed); 1 failed attempt retried" in log
    )
    assert re.search(rf"WARNING +job {failing.id} explode attempt 2/2 failed for good", log)


# -- mistakes: one line, no traceback --------------------------------------------------------------


async def test_every_mistake_is_one_line_with_the_right_exit_status(
    tmp_path: Path, db: str
) -> None:
    assert_ok(await cli("submit", "echo", "--db", db, cwd=tmp_path))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just some text that is long enough" * 100)
    unknown = "0" * 32
    cases: list[tuple[tuple[str, ...], int, str]] = [
        ((), 2, "the following arguments are required: COMMAND"),
        (("frobnicate",), 2, "invalid choice: 'frobnicate'"),
        (("submit", "echo", "{nope", "--db", db), 2, "invalid JSON payload"),
        (("submit", "--db", db), 2, "submit: the following arguments are required: TYPE"),
        (("submit", "echo", "--priority", "urgent", "--db", db), 2, "invalid priority 'urgent'"),
        (("submit", "echo", "--delay", "soon", "--db", db), 2, "invalid duration 'soon'"),
        (("purge", "--older-than", "3 fortnights", "--db", db), 2, "invalid duration"),
        (("purge", "--db", db), 2, "required: --older-than"),
        (("list", "--status", "done", "--db", db), 2, "invalid status 'done'"),
        (("list", "--limit", "0", "--db", db), 2, "must be at least 1"),
        (("list", "--db", db, "--dsn", PG_DSN), 2, "not both"),
        (("show", unknown, "--db", db), 1, f"no job with id '{unknown}'"),
        (("cancel", unknown, "--db", db), 1, "no job with id"),
        (("retry", unknown, "--db", db), 1, "no job with id"),
        (("list", "--db", str(tmp_path / "missing.db")), 3, "no database at"),
        (("submit", "echo", "--db", str(tmp_path / "missing.db")), 3, "no database at"),
        (("submit", "echo", "--db", str(tmp_path / "no" / "such" / "dir.db")), 3, "no database"),
        (("stats", "--db", str(garbage)), 3, "not a trio_jobs SQLite database"),
        (("stats", "--db", str(tmp_path)), 1, "cannot open"),
        (("stats", "--dsn", "postgresql://postgres@127.0.0.1:1/test"), 1, "cannot open PostgreSQL"),
        (("worker", "nocolon", "--db", db), 2, "APP must be module:attribute"),
        (("worker", "no_such_module:HANDLERS", "--db", db), 1, "cannot import 'no_such_module'"),
        (("worker", "worker_apps:MISSING", "--db", db), 1, "has no attribute 'MISSING'"),
        (("worker", "worker_apps:NOT_HANDLERS", "--db", db), 1, "expected a mapping"),
        (("worker", "worker_apps:setup_nothing", "--db", db), 1, "registered no handlers"),
        (("worker", "worker_apps:HANDLERS", "--concurrency", "0", "--db", db), 2, "at least 1"),
        (("demo", "--memory", "--db", db), 2, "not several"),
    ]
    results = await cli_many([args for args, _, _ in cases], cwd=tmp_path)
    both = await cli("stats", env={"TRIO_JOBS_DB": db, "TRIO_JOBS_DSN": PG_DSN}, cwd=tmp_path)
    cases.append((("stats", "# with TRIO_JOBS_DB and TRIO_JOBS_DSN"), 2, "both TRIO_JOBS_DB"))
    results.append(both)

    wrong = []
    for (args, code, fragment), result in zip(cases, results, strict=True):
        try:
            assert_one_line_error(result, code, fragment)
        except AssertionError as exc:
            wrong.append(f"{' '.join(args)!r}: {exc}")
    assert not wrong, "\n".join(wrong)
    assert not await trio.Path(tmp_path / "missing.db").exists()  # reading creates no database


# -- the demo -------------------------------------------------------------------------------


async def test_demo_runs_in_memory_and_on_a_temporary_sqlite_file(tmp_path: Path) -> None:
    memory, sqlite = await cli_many([("demo", "--memory"), ("demo",)], cwd=tmp_path)
    for result, where in ((memory, "in-memory store"), (sqlite, "SQLite database")):
        assert_ok(result)
        out = result.stdout
        assert where in out.splitlines()[0]
        summary = out[out.index("Summary") :]
        assert re.search(r"call-flaky-api\s+HIGH\s+completed\s+3/4", summary)
        assert re.search(r"generate-report\s+NORMAL\s+completed\s+2/3", summary)
        assert re.search(r"generate-report\s+LOW\s+timeout\s+2/2", summary)
        assert re.search(r"charge-card\s+NORMAL\s+failed\s+1/3", summary)
        assert re.search(r"import-dataset\s+NORMAL\s+cancelled\s+1/3", summary)
        assert re.search(r"send-email\s+CRITICAL\s+completed", summary)
        assert "Stats: 8 completed, 1 failed, 1 timed out, 1 cancelled" in out
        events = out[: out.index("Summary")]
        assert re.search(r"retrying\s+call-flaky-api", events)
        assert re.search(r"progress\s+resize-image.*100%", events)
        # The CRITICAL e-mail submitted last started before the LOW newsletters.
        starts = re.findall(r"started\s+send-email\s+(\w+)", events)
        assert starts[0] == "CRITICAL", starts
    # The default demo cleans up its temporary database.
    path = re.search(r"SQLite database (\S+)", sqlite.stdout)
    assert path is not None
    assert not await trio.Path(path.group(1)).exists()


async def test_submit_dash_reads_one_payload_per_line_as_one_batch(tmp_path: Path, db: str) -> None:
    piped = assert_ok(
        await cli("submit", "echo", "-", "--db", db, cwd=tmp_path, stdin='{"a": 1}\n\n2\n"three"\n')
    )
    ids = piped.stdout.split()
    assert len(ids) == 3
    async with JobClient(SQLiteStorage(db)) as jobs:
        payloads = [(await jobs.get_job(i)).payload for i in ids]  # type: ignore[union-attr]
    assert payloads == [{"a": 1}, 2, "three"]
    bad = await cli("submit", "echo", "-", "--db", db, cwd=tmp_path, stdin='1\n{"oops"\n')
    assert bad.code == 2
    assert "invalid JSON" in bad.stderr
    tagged = assert_ok(
        await cli(
            "submit", "echo", "-", "--db", db, "--metadata", '{"source": "batch"}',
            "--tenant", "acme", cwd=tmp_path, stdin="1\n2\n",
        )
    )  # fmt: skip
    async with JobClient(SQLiteStorage(db)) as jobs:
        tagged_jobs = [await jobs.get_job(i) for i in tagged.stdout.split()]
    assert [(j.metadata, j.tenant_id) for j in tagged_jobs if j is not None] == [
        ({"source": "batch"}, "acme")
    ] * 2
    missing = str(tmp_path / "missing.db")
    refused = await cli("submit", "echo", "-", "--db", missing, cwd=tmp_path, stdin="1\n")
    assert refused.code == 3
    assert "no database" in refused.stderr
    assert not await trio.Path(missing).exists()


async def test_submit_run_at_and_unique_key(tmp_path: Path, db: str) -> None:
    first = assert_ok(
        await cli(
            "submit", "echo", "--db", db, "--run-at", "2030-01-01T09:00+01:00",
            "--unique-key", "k", cwd=tmp_path,
        )
    )  # fmt: skip
    again = assert_ok(await cli("submit", "echo", "--db", db, "--unique-key", "k", cwd=tmp_path))
    assert first.stdout == again.stdout
    async with JobClient(SQLiteStorage(db)) as jobs:
        job = await jobs.get_job(first.stdout.strip())
    assert job is not None
    assert job.run_at is not None
    # Stored as a delay from the save: exact to the time the save took.
    assert abs(job.run_at.timestamp() - datetime(2030, 1, 1, 8, tzinfo=UTC).timestamp()) < 5
    naive = await cli("submit", "echo", "--db", db, "--run-at", "2030-01-01T09:00", cwd=tmp_path)
    assert naive.code == 2
    assert "UTC offset" in naive.stderr


async def test_retry_is_refused_while_an_active_job_holds_the_unique_key(
    tmp_path: Path, db: str
) -> None:
    async with JobClient(SQLiteStorage(db)) as jobs:
        first = await jobs.submit("echo", 1, unique_key="k")
        await jobs.cancel(first.id)
        second = await jobs.submit("echo", 2, unique_key="k")
    refused = await cli("retry", first.id, "--db", db, cwd=tmp_path)
    assert_one_line_error(refused, 1, f"unique_key 'k' is held by active job {second.id}")


async def test_schedules_lists_stored_schedules(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    async with JobRunner(storage=SQLiteStorage(db)) as runner:
        runner.register_handler("echo", echo_handler)
        runner.add_schedule("echo", every=3600.0, key="hourly")
        while not await runner.storage.list_schedules():  # type: ignore[attr-defined]  # noqa: ASYNC110
            await trio.sleep(0.01)
        await runner.stop()
    table = assert_ok(await cli("schedules", "--db", db, cwd=tmp_path))
    assert "hourly" in table.stdout
    assert "every 1h" in table.stdout
    data = assert_ok(await cli("schedules", "--db", db, "--json", cwd=tmp_path)).json()
    assert data[0]["key"] == "hourly"
    assert data[0]["every"] == 3600.0
    assert data[0]["next_run_at"] is not None


async def echo_handler(job: Any, ctx: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return job.payload
