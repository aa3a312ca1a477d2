"""The ``trio-jobs`` command: run workers, submit and inspect jobs, see the demo.

Every command works on one store, chosen the same way:

- ``--db PATH``: an SQLite file (the default: ``./trio_jobs.db``, or ``$TRIO_JOBS_DB``);
- ``--dsn DSN``: a PostgreSQL database (or ``$TRIO_JOBS_DSN``), its tables in the
  schema ``--schema`` (default ``trio_jobs``, or ``$TRIO_JOBS_SCHEMA``).

Options on the command line beat the environment; giving both ``--db`` and
``--dsn`` is a usage error. Output is an aligned table for people, or JSON with
``--json``. A mistake (bad JSON, unknown id, unopenable database, ...) prints one
line, ``trio-jobs: error: ...``, and exits with status 2 for a usage error or 1
for anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import attrs
import trio

from .._client import JobClient
from .._records import Job
from ..storage._base import CancelOutcome, JobStorage
from ._format import (
    argument_type,
    job_details,
    jobs_table,
    one_line,
    parse_duration,
    parse_positive_int,
    parse_priority,
    parse_status,
    parse_timeout,
    stats_table,
    to_json,
)

PROG = "trio-jobs"
DEFAULT_DB = "trio_jobs.db"
DEFAULT_SCHEMA = "trio_jobs"


class CliError(Exception):
    """A mistake to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """A malformed command line (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports mistakes as :class:`UsageError`, in one line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{command}: {message}" if command else message)


# -- choosing the store -------------------------------------------------------------------


@attrs.frozen
class StoreSpec:
    """Which store a command works on (the DSN is never printed: it may hold a password)."""

    kind: str  # "sqlite", "postgres" or "memory"
    location: str = ""
    schema: str = DEFAULT_SCHEMA

    def describe(self) -> str:
        """Name the store for messages."""
        if self.kind == "sqlite":
            return f"SQLite database {self.location}"
        if self.kind == "postgres":
            return f"PostgreSQL schema {self.schema}"
        return "in-memory store"

    def create(self, *, lease_duration: float = 30.0, max_connections: int = 10) -> JobStorage:
        """Make the (unopened) store."""
        from ..storage._memory import MemoryStorage
        from ..storage.postgres import PostgresStorage
        from ..storage.sqlite import SQLiteStorage

        if self.kind == "sqlite":
            return SQLiteStorage(self.location, lease_duration=lease_duration)
        if self.kind == "postgres":
            try:
                return PostgresStorage(
                    self.location,
                    schema=self.schema,
                    lease_duration=lease_duration,
                    max_connections=max_connections,
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        return MemoryStorage(lease_duration=lease_duration)


def store_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> StoreSpec:
    """Choose the store from ``--db``/``--dsn``, then the environment, then the default.

    Raises:
        UsageError: both a file and a DSN were given.
    """
    schema = args.schema or environ.get("TRIO_JOBS_SCHEMA") or DEFAULT_SCHEMA
    if args.db is not None and args.dsn is not None:
        raise UsageError("give either --db (SQLite) or --dsn (PostgreSQL), not both")
    if args.dsn is not None:
        return StoreSpec("postgres", args.dsn, schema)
    if args.db is not None:
        return StoreSpec("sqlite", args.db)
    env_db, env_dsn = environ.get("TRIO_JOBS_DB"), environ.get("TRIO_JOBS_DSN")
    if env_db and env_dsn:
        raise UsageError(
            "both TRIO_JOBS_DB and TRIO_JOBS_DSN are set: unset one, or pass --db or --dsn"
        )
    if env_dsn:
        return StoreSpec("postgres", env_dsn, schema)
    return StoreSpec("sqlite", env_db or DEFAULT_DB)


async def open_storage(storage: JobStorage, spec: StoreSpec, *, must_exist: bool = False) -> None:
    """Open ``storage``, turning any failure into a one-line :class:`CliError`.

    Args:
        storage: The store ``spec`` made.
        spec: What it is, for the message.
        must_exist: Refuse to create a missing SQLite file (commands that only read
            or change existing jobs: a typo in ``--db`` must not look like an empty
            queue).
    """
    if must_exist and spec.kind == "sqlite" and not await trio.Path(spec.location).exists():
        raise CliError(
            f"no database at {spec.location} (nothing was submitted there yet;"
            " pass --db PATH or set TRIO_JOBS_DB)"
        )
    try:
        await storage.open()
    except Exception as exc:
        raise CliError(f"cannot open {spec.describe()}: {one_line(str(exc))}") from None


@asynccontextmanager
async def _client(args: argparse.Namespace, *, must_exist: bool) -> AsyncIterator[JobClient]:
    spec = args.store
    storage = spec.create(max_connections=2)
    await open_storage(storage, spec, must_exist=must_exist)
    async with JobClient(storage) as client:
        yield client


# -- the commands ---------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(to_json(data), indent=2, ensure_ascii=False))
    else:
        print(text)


async def _find(client: JobClient, job_id: str) -> Job[Any]:
    job = await client.get_job(job_id)
    if job is None:
        raise CliError(f"no job with id {job_id!r}")
    return job


async def cmd_submit(args: argparse.Namespace) -> int:
    """``submit TYPE [JSON]``: enqueue a job; print its id."""
    text = sys.stdin.read() if args.payload == "-" else args.payload
    payload = None
    if text is not None:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"submit: invalid JSON payload: {exc}") from None
    retry = None if args.max_attempts is None else {"max_attempts": args.max_attempts}
    async with _client(args, must_exist=False) as client:
        try:
            handle = await client.submit(
                args.type,
                payload,
                priority=args.priority,
                retry=retry,
                timeout=args.timeout,
                delay=args.delay,
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"submit: {exc}") from None
        job = await client.get_job(handle.id)
    _emit(args, job, handle.id)
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    """``list``: the newest jobs, filtered by status and type."""
    async with _client(args, must_exist=True) as client:
        jobs = await client.storage.list_jobs(
            status=args.status, job_type=args.type, limit=args.limit
        )
    _emit(args, jobs, jobs_table(jobs) if jobs else "no jobs")
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    """``show ID``: every field of one job, with its last error's traceback."""
    async with _client(args, must_exist=True) as client:
        job = await _find(client, args.id)
    _emit(args, job, job_details(job))
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: counts by status."""
    async with _client(args, must_exist=True) as client:
        stats = await client.stats()
    _emit(args, stats, stats_table(stats))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    """``cancel ID``: cancel a waiting job, or ask a running job's worker to stop it."""
    async with _client(args, must_exist=True) as client:
        outcome = await client.storage.request_cancel(args.id)
        job = await _find(client, args.id)
    if outcome is CancelOutcome.NOTHING:
        raise CliError(f"job {args.id} is already {job.status.value}: nothing to cancel")
    if outcome is CancelOutcome.CANCELLED:
        text = f"cancelled job {args.id}"
    else:
        text = f"job {args.id} is running: its worker was asked to cancel it"
    _emit(args, {"id": args.id, "outcome": outcome.value, "status": job.status}, text)
    return 0


async def cmd_retry(args: argparse.Namespace) -> int:
    """``retry ID``: re-queue a failed, timed-out or cancelled job with fresh attempts."""
    async with _client(args, must_exist=True) as client:
        requeued = await client.storage.requeue(args.id)
        job = await _find(client, args.id)
    if not requeued:
        raise CliError(
            f"job {args.id} is {job.status.value}: only failed, timeout and cancelled"
            " jobs can be retried"
        )
    _emit(args, job, f"requeued job {args.id} ({job.type}) with fresh attempts")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    """``purge --older-than DURATION``: delete final jobs that finished before then."""
    async with _client(args, must_exist=True) as client:
        count = await client.storage.purge(args.older_than)
    _emit(args, {"purged": count}, f"purged {count} job{'' if count == 1 else 's'}")
    return 0


async def cmd_migrate(args: argparse.Namespace) -> int:
    """``migrate``: create or update the store's tables; print the schema version."""
    spec: StoreSpec = args.store
    storage = spec.create(max_connections=2)
    from ..storage.postgres import PostgresStorage

    if isinstance(storage, PostgresStorage):
        try:
            version = await storage.migrate()
        except Exception as exc:
            raise CliError(f"cannot migrate {spec.describe()}: {one_line(str(exc))}") from None
    else:
        from ..storage.sqlite._store import SCHEMA_VERSION

        await open_storage(storage, spec)
        await storage.close()
        version = SCHEMA_VERSION
    data = {"store": spec.kind, "schema_version": version}
    if spec.kind == "sqlite":
        data["path"] = spec.location
    else:
        data["schema"] = spec.schema
    _emit(args, data, f"{spec.describe()} is at schema version {version}")
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    """``worker APP``: run jobs until a signal stops it."""
    from ._worker import run_worker

    return await run_worker(args)


async def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: a live tour on a fresh temporary SQLite file (or ``--memory``)."""
    from ._demo import run_demo

    if args.memory and (args.db is not None or args.dsn is not None):
        raise UsageError("demo: give --memory, --db or --dsn, not several")
    if args.memory:
        spec = StoreSpec("memory")
    elif args.db is not None or args.dsn is not None:
        spec = store_spec(args, {})
    else:
        with tempfile.TemporaryDirectory(prefix="trio-jobs-demo-") as folder:
            spec = StoreSpec("sqlite", os.path.join(folder, "demo.db"))
            return await _demo_on(spec, run_demo)
    return await _demo_on(spec, run_demo)


async def _demo_on(spec: StoreSpec, run_demo: Callable[..., Awaitable[None]]) -> int:
    storage = spec.create()
    await open_storage(storage, spec)
    await run_demo(storage, where=spec.describe())
    return 0


# -- the parser -----------------------------------------------------------------------------


def _add_store_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Options are accepted before and after the command; after it, absent ones must
    # not overwrite what was given before (hence SUPPRESS).
    default = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("store")
    group.add_argument(
        "--db",
        metavar="PATH",
        default=default,
        help=f"SQLite file (default: $TRIO_JOBS_DB or ./{DEFAULT_DB})",
    )
    group.add_argument(
        "--dsn", default=default, help="PostgreSQL connection string (default: $TRIO_JOBS_DSN)"
    )
    group.add_argument(
        "--schema",
        default=default,
        help=f"PostgreSQL schema (default: $TRIO_JOBS_SCHEMA or {DEFAULT_SCHEMA})",
    )


def _add_json_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON instead of a table",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``trio-jobs`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="Run trio_jobs workers and manage their queue (SQLite or PostgreSQL).",
        epilog="Start with: trio-jobs demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store_options(parser, top=True)
    _add_json_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[..., Any], help: str, **kwargs: Any) -> Any:
        sub = commands.add_parser(name, help=help, description=help, **kwargs)
        _add_store_options(sub, top=False)
        sub.set_defaults(run=run)
        return sub

    from ._worker import WORKER_HELP, add_worker_arguments

    worker = command(
        "worker",
        cmd_worker,
        "run jobs with the handlers of APP until stopped",
        epilog=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_worker_arguments(worker)

    submit = command("submit", cmd_submit, "enqueue a job and print its id")
    _add_json_option(submit, top=False)
    submit.add_argument("type", metavar="TYPE", help="the job type")
    submit.add_argument(
        "payload", metavar="JSON", nargs="?", help="the payload as JSON ('-' reads stdin)"
    )
    submit.add_argument(
        "--priority",
        type=argument_type(parse_priority),
        default="normal",
        help="low, normal, high, critical, or 0-3 (default normal)",
    )
    submit.add_argument(
        "--delay",
        type=argument_type(parse_duration),
        default=0.0,
        metavar="S",
        help="run no sooner than this",
    )
    submit.add_argument(
        "--timeout",
        type=argument_type(parse_timeout),
        default=None,
        metavar="S",
        help="seconds each attempt may run, or 'none' (default 300)",
    )
    submit.add_argument(
        "--max-attempts",
        type=argument_type(parse_positive_int),
        default=None,
        metavar="N",
        help="default 3",
    )

    listing = command("list", cmd_list, "list jobs, newest first")
    _add_json_option(listing, top=False)
    listing.add_argument("--status", type=argument_type(parse_status), default=None)
    listing.add_argument("--type", default=None, help="only jobs of this type")
    listing.add_argument(
        "--limit",
        type=argument_type(parse_positive_int),
        default=100,
        metavar="N",
        help="default 100",
    )

    show = command("show", cmd_show, "show every field of one job")
    _add_json_option(show, top=False)
    show.add_argument("id", metavar="ID")

    stats = command("stats", cmd_stats, "count jobs by status")
    _add_json_option(stats, top=False)

    cancel = command("cancel", cmd_cancel, "cancel a job (a running one is stopped by its worker)")
    _add_json_option(cancel, top=False)
    cancel.add_argument("id", metavar="ID")

    retry = command("retry", cmd_retry, "re-queue a failed, timeout or cancelled job")
    _add_json_option(retry, top=False)
    retry.add_argument("id", metavar="ID")

    purge = command("purge", cmd_purge, "delete final jobs that finished long enough ago")
    _add_json_option(purge, top=False)
    purge.add_argument(
        "--older-than",
        type=argument_type(parse_duration),
        required=True,
        metavar="DURATION",
        help="e.g. 30s, 15m, 12h, 7d",
    )

    migrate = command("migrate", cmd_migrate, "create or update the store's tables")
    _add_json_option(migrate, top=False)

    demo = command(
        "demo", cmd_demo, "watch a mix of jobs run live (on a fresh temporary SQLite file)"
    )
    demo.add_argument("--memory", action="store_true", help="use the in-memory store")
    return parser


# -- running ------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    result: int = await args.run(args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-jobs`` command; return its exit status.

    Args:
        argv: The arguments (``sys.argv[1:]`` when ``None``).
    """
    try:
        args = build_parser().parse_args(argv)
        if args.command != "demo":
            args.store = store_spec(args, os.environ)
        code = trio.run(_run, args)
        sys.stdout.flush()  # here, where a closed pipe is still ours to handle
    except CliError as exc:
        return _fail(exc)
    except BaseExceptionGroup as group:
        leaf = _single_cli_error(group)
        if leaf is None:
            raise
        return _fail(leaf)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`trio-jobs list | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("TRIO_JOBS_DEBUG"):
            raise
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {one_line(str(exc))}"
            " (set TRIO_JOBS_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1
    return code


def _fail(error: CliError) -> int:
    print(f"{PROG}: error: {one_line(str(error))}", file=sys.stderr)
    return error.code


def _single_cli_error(group: BaseExceptionGroup[BaseException]) -> CliError | None:
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    if len(leaves) == 1 and isinstance(leaves[0], CliError):
        return leaves[0]
    return None


__all__ = ["CliError", "StoreSpec", "UsageError", "build_parser", "main", "open_storage"]
