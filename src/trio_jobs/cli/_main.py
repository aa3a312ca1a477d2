"""The ``trio-jobs`` command line: its parser, and :func:`main`, which runs a command.

:func:`main` turns every mistake into one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import trio

from .._exceptions import StorageCorruptError, StorageError
from .._outcome import unwrap
from ._commands import (
    cmd_cancel,
    cmd_demo,
    cmd_limits,
    cmd_list,
    cmd_migrate,
    cmd_pause,
    cmd_purge,
    cmd_resume,
    cmd_retry,
    cmd_schedules,
    cmd_show,
    cmd_stats,
    cmd_submit,
    cmd_tenant_weight,
    cmd_worker,
    cmd_workers,
)
from ._dashboard import add_dashboard_arguments, add_metrics_arguments, cmd_dashboard
from ._errors import CliError, StoreUnusableError, UsageError
from ._format import (
    argument_type,
    one_line,
    parse_duration,
    parse_positive_int,
    parse_priority,
    parse_rate,
    parse_run_at,
    parse_status,
    parse_timeout,
    parse_weight,
)
from ._store import DEFAULT_DB, DEFAULT_SCHEMA, store_spec
from ._worker import WORKER_HELP, add_worker_arguments

PROG = "trio-jobs"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports mistakes as :class:`UsageError`, in one line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        raise UsageError(f"{command}: {message}" if command else message)


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
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    _add_store_options(parser, top=True)
    _add_json_option(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[..., Any], help: str, **kwargs: Any) -> Any:
        sub = commands.add_parser(name, help=help, description=help, **kwargs)
        _add_store_options(sub, top=False)
        sub.set_defaults(run=run)
        return sub

    worker = command(
        "worker",
        cmd_worker,
        "run jobs with the handlers of APP until stopped",
        epilog=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_worker_arguments(worker)
    add_metrics_arguments(worker)

    dashboard = command(
        "dashboard", cmd_dashboard, "serve the web dashboard and /metrics of the queue"
    )
    add_dashboard_arguments(dashboard)

    submit = command("submit", cmd_submit, "enqueue a job and print its id")
    _add_json_option(submit, top=False)
    submit.add_argument("type", metavar="TYPE", help="the job type")
    submit.add_argument(
        "payload",
        metavar="JSON",
        nargs="?",
        help="the payload as JSON; '-' reads one payload per line from stdin (one batch)",
    )
    submit.add_argument(
        "--run-at",
        type=argument_type(parse_run_at),
        default=None,
        metavar="TIME",
        help="run no sooner than this ISO 8601 time with a UTC offset (not with --delay)",
    )
    submit.add_argument(
        "--unique-key",
        default=None,
        metavar="KEY",
        help="store nothing while a job with this key is active (print that job's id)",
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
        help="seconds each attempt may run, or 'none' (also 'inf') for no limit (default 300)",
    )
    submit.add_argument(
        "--max-attempts",
        type=argument_type(parse_positive_int),
        default=None,
        metavar="N",
        help="default 3",
    )
    submit.add_argument(
        "--metadata", metavar="JSON", default=None, help="a JSON object stored with the job"
    )
    submit.add_argument(
        "--tenant", metavar="ID", default=None, help="the tenant the job belongs to"
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
    listing.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="then keep watching: print each change as it happens, until Ctrl-C",
    )

    show = command("show", cmd_show, "show every field of one job")
    _add_json_option(show, top=False)
    show.add_argument("id", metavar="ID")

    stats = command("stats", cmd_stats, "count jobs by status")
    _add_json_option(stats, top=False)

    schedules = command("schedules", cmd_schedules, "list schedules: last and next run")
    _add_json_option(schedules, top=False)

    workers = command("workers", cmd_workers, "list the live workers and what they run")
    _add_json_option(workers, top=False)

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

    pause = command("pause", cmd_pause, "stop every worker from claiming jobs of TYPE")
    _add_json_option(pause, top=False)
    pause.add_argument("type", metavar="TYPE")
    resume = command("resume", cmd_resume, "let workers claim jobs of TYPE again")
    _add_json_option(resume, top=False)
    resume.add_argument("type", metavar="TYPE")
    limits = command(
        "limits", cmd_limits, "show the flow limits of job types, or change those of TYPE"
    )
    _add_json_option(limits, top=False)
    limits.add_argument("type", metavar="TYPE", nargs="?", default=None)
    limits.add_argument(
        "--max-running",
        type=argument_type(parse_positive_int),
        default=None,
        metavar="N",
        help="at most N attempts of TYPE at once, across all workers",
    )
    limits.add_argument(
        "--per-tenant",
        dest="max_running_per_tenant",
        type=argument_type(parse_positive_int),
        default=None,
        metavar="N",
        help="at most N attempts at once per tenant",
    )
    limits.add_argument(
        "--rate",
        type=argument_type(parse_rate),
        default=None,
        metavar="N/SECONDS",
        help="at most N starts in any window of SECONDS (e.g. 100/60)",
    )
    limits.add_argument(
        "--fair",
        dest="fair_tenants",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tenants take turns by weight (--no-fair: FIFO across tenants)",
    )
    weight = command("tenant-weight", cmd_tenant_weight, "set a tenant's share in fair turns")
    _add_json_option(weight, top=False)
    weight.add_argument("tenant", metavar="TENANT")
    weight.add_argument("weight", metavar="WEIGHT", type=argument_type(parse_weight))

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
        args = build_parser().parse_args(_join_negative_values(argv))
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
    except StorageError as exc:
        return _fail(_store_error(exc))
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
    single = unwrap(group)
    if isinstance(single, StorageError):
        return _store_error(single)
    return single if isinstance(single, CliError) else None


def _store_error(error: StorageError) -> CliError:
    """A store error that reached the top: exit 3 if it will not pass, else 1."""
    if isinstance(error, StorageCorruptError):
        return StoreUnusableError(str(error))
    return CliError(f"the store failed: {error}")


#: Options whose value may start with "-" (a negative duration is refused by its
#: parser with a clear message; argparse would take it for an option).
_VALUE_OPTIONS = frozenset(
    {"--delay", "--timeout", "--older-than", "--poll-interval", "--lease-duration", "--limit"}
)


def _join_negative_values(argv: Sequence[str] | None) -> list[str]:
    """Turn ``--older-than -1d`` into ``--older-than=-1d``, so its parser judges the value."""
    args = list(sys.argv[1:] if argv is None else argv)
    joined: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        following = args[i + 1] if i + 1 < len(args) else ""
        if arg in _VALUE_OPTIONS and following[:2].startswith("-") and following[1:2].isdigit():
            joined.append(f"{arg}={following}")
            i += 2
            continue
        joined.append(arg)
        i += 1
    return joined


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trio-jobs")
    except PackageNotFoundError:
        return "unknown"


__all__ = ["PROG", "build_parser", "main"]
