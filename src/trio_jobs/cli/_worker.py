"""``trio-jobs worker APP``: load the handlers, run a JobRunner on the store until signalled."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio

from .._exceptions import StorageCorruptError
from .._records import Job
from .._runner import JobRunner
from ._dashboard import import_dashboard
from ._errors import CliError, StoreUnusableError, UsageError
from ._format import (
    argument_type,
    attempts_text,
    format_seconds,
    one_line,
    parse_positive_duration,
    parse_positive_int,
)
from ._store import StoreSpec, open_storage, unhandled_text, unhandled_types

Installer = Callable[[JobRunner], Awaitable[None]]

WORKER_HELP = """\
APP names what holds the handlers, as module:attribute (the module is imported
from the current directory or sys.path), and is either

  a mapping {job_type: handler}:

      async def send_email(job, ctx): ...
      HANDLERS = {"send-email": send_email}        # trio-jobs worker myapp:HANDLERS

  or a function setup(runner) that registers them (it may be async):

      def setup(runner):                           # trio-jobs worker myapp:setup
          runner.register_handler("send-email", send_email)

The same module serves in-process use:

      async with JobRunner(storage=SQLiteStorage("trio_jobs.db")) as runner:
          setup(runner)   # or: for t, h in HANDLERS.items(): runner.register_handler(t, h)

The first SIGINT (Ctrl-C) or SIGTERM stops the worker gracefully: it starts
nothing new and lets running jobs finish; a second one cancels them (they go
back to pending and run again later). One line per job event is logged to stderr.
"""


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``worker`` command's arguments to its parser."""
    parser.add_argument("app", metavar="APP", help="module:attribute holding the handlers")
    parser.add_argument(
        "--concurrency",
        type=argument_type(parse_positive_int),
        default=10,
        help="jobs run at once (default 10)",
    )
    parser.add_argument(
        "--poll-interval",
        type=argument_type(parse_positive_duration),
        default=1.0,
        metavar="S",
        help="seconds between polls of the store (default 1)",
    )
    parser.add_argument(
        "--lease-duration",
        type=argument_type(parse_positive_duration),
        default=30.0,
        metavar="S",
        help="seconds a claim lasts without a heartbeat: a crashed worker's jobs"
        " run again this long after the crash (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="default INFO: one line per job event",
    )


def load_app(spec: str) -> Installer:
    """Import ``module:attribute`` and return a function that installs its handlers.

    The attribute is a mapping ``{job_type: handler}`` or a callable
    ``setup(runner)`` (sync or async) that registers handlers itself. The current
    directory is put on ``sys.path`` first, as ``python -m`` does.

    Raises:
        UsageError: ``spec`` is not ``module:attribute``.
        CliError: the module cannot be imported, lacks the attribute, or the
            attribute is neither a mapping nor a callable.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"worker: APP must be module:attribute (e.g. myapp:HANDLERS), got {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CliError(
                f"cannot import {module_name!r} (APP {spec}): no module named {exc.name!r}"
                f" in {cwd} or on sys.path"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {_describe(exc)}") from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {_describe(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attribute!r}") from None

    if isinstance(target, Mapping):
        handlers = target

        async def install_mapping(runner: JobRunner) -> None:
            for job_type, handler in handlers.items():
                runner.register_handler(job_type, handler)
            await trio.lowlevel.checkpoint()

        return install_mapping
    if callable(target):
        if _looks_like_a_handler(target):
            raise CliError(
                f"{spec} looks like a handler (job, ctx), not a setup(runner) function:"
                f" point APP at a mapping {{job_type: handler}}, e.g. HANDLERS ="
                f" {{{attribute.rsplit('.', 1)[-1]!r}: {attribute.rsplit('.', 1)[-1]}}}"
            )
        setup = target

        async def install_setup(runner: JobRunner) -> None:
            result = setup(runner)
            if inspect.isawaitable(result):
                await result
            else:
                await trio.lowlevel.checkpoint()

        return install_setup
    raise CliError(
        f"{spec} is a {type(target).__name__}: expected a mapping {{job_type: handler}}"
        " or a setup(runner) function"
    )


def _looks_like_a_handler(target: Any) -> bool:
    """Whether ``target`` needs two positional arguments, as a handler does."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) >= 2


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def registered_types(runner: JobRunner) -> list[str]:
    """Return the job types ``runner`` has handlers for."""
    return sorted(runner.job_types)


class _EventLog:
    """Logs one line per job event, and counts jobs (not attempts) for the closing line."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        #: Jobs that reached a final status here, by outcome.
        self.counts = {"completed": 0, "failed": 0, "timed out": 0, "cancelled": 0}
        #: Failed attempts that were retried.
        self.retried = 0
        #: Jobs with an attempt running here (started, no outcome yet).
        self.active: set[str] = set()
        self._timeouts: set[str] = set()

    def attach(self, runner: JobRunner) -> None:
        runner.on("job:started", self.started)
        runner.on("job:completed", self.completed)
        runner.on("job:retrying", self.retrying)
        runner.on("job:failed", self.failed)
        runner.on("job:timeout", self.timed_out)
        runner.on("job:cancelled", self.cancelled)

    def _line(self, job: Job[Any], what: str, *args: object, level: int = logging.INFO) -> None:
        if self.logger.isEnabledFor(level):  # (at WARNING, two lines a job are not built)
            self.logger.log(
                level, "job %s %s attempt %s " + what, job.id, job.type, attempts_text(job), *args
            )

    def _ended(self, job: Job[Any], outcome: str) -> None:
        if job.id in self.active:
            self.active.discard(job.id)
            self.counts[outcome] += 1

    def started(self, job: Job[Any]) -> None:
        self.active.add(job.id)
        self._line(job, "started")

    def completed(self, job: Job[Any], result: Any) -> None:
        self._ended(job, "completed")
        if self.logger.isEnabledFor(logging.INFO):
            self._line(job, "completed in %s", format_seconds(job.execution_time))

    def retrying(self, job: Job[Any], attempt: int, delay: float) -> None:
        self.active.discard(job.id)
        self.counts["timed out"] -= job.id in self._timeouts
        self._timeouts.discard(job.id)
        self.retried += 1
        error = job.last_error
        reason = f"{error.type}: {one_line(error.message, 200)}" if error else "error"
        self._line(job, "failed, retrying in %s: %s", format_seconds(delay), reason)

    def failed(self, job: Job[Any], error: BaseException) -> None:
        self._ended(job, "failed")
        self._line(job, "failed for good: %s", _describe(error), level=logging.WARNING)

    #: Jobs counted as timed out for good whose retry may still be announced
    #: (``job:timeout`` comes before the job is judged; ``job:retrying`` after).
    _timeouts: set[str]

    def timed_out(self, job: Job[Any]) -> None:
        limit = "its timeout" if job.timeout is None else format_seconds(job.timeout)
        if job.attempts < job.max_attempts:
            # Most likely retried (``job:retrying`` follows and undoes the count).
            self._line(job, "timed out after %s", limit)
        else:
            self._line(job, "timed out after %s, for good", limit, level=logging.WARNING)
        if job.id in self.active:
            self.active.discard(job.id)
            self.counts["timed out"] += 1
            self._timeouts.add(job.id)

    def cancelled(self, job: Job[Any]) -> None:
        self._ended(job, "cancelled")
        self.logger.info("job %s %s cancelled", job.id, job.type)

    def summary(self) -> str:
        """The closing line: what became of the jobs this worker ran."""
        finished = sum(self.counts.values())
        parts = []
        if finished:
            outcomes = ", ".join(f"{n} {what}" for what, n in self.counts.items() if n)
            parts.append(f"{finished} job{'' if finished == 1 else 's'} finished ({outcomes})")
        if self.active:
            n = len(self.active)
            parts.append(f"{n} interrupted job{'' if n == 1 else 's'} back to pending")
        if self.retried:
            n = self.retried
            parts.append(f"{n} failed attempt{'' if n == 1 else 's'} retried")
        return "; ".join(parts) or "no jobs run"


#: The loggers whose lines the worker prints: ours, and the PostgreSQL driver's.
_LOGGERS = ("trio_jobs", "psycopg")


#: How often a worker looks for waiting jobs that no live worker handles (seconds).
UNHANDLED_CHECK_INTERVAL = 60.0


async def _warn_of_unhandled_jobs(runner: JobRunner, log: logging.Logger) -> None:
    """Warn when jobs sit in the store that no live worker (this one included) can run.

    Looks at start and every minute; warns again only when the set of such types
    grows. Store errors are left to the runner, which reports them.
    """
    warned: set[str] = set()
    while True:
        try:
            unhandled = await unhandled_types(runner.storage, await runner.workers())
        except Exception as exc:
            log.debug("looking for jobs no worker handles failed: %r", exc)
        else:
            if set(unhandled) - warned:
                log.warning("%s", unhandled_text(unhandled))
            warned = set(unhandled)
        await trio.sleep(UNHANDLED_CHECK_INTERVAL)


def _metrics_app(
    args: argparse.Namespace, runner: JobRunner, storage: Any
) -> tuple[Any, str, int] | None:
    """With ``--metrics-port``: an app serving the runner's metrics, its host and port."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    dashboard = import_dashboard()
    metrics = dashboard.JobMetrics()
    metrics.attach(runner)
    return dashboard.create_metrics_app(storage, metrics), args.metrics_host, port


def _configure_logging(level: str) -> tuple[logging.Logger, logging.Handler]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logger = logging.getLogger("trio_jobs")
    logger.addHandler(handler)
    logger.setLevel(level)
    # psycopg's pool says "discarding closed connection: <psycopg.Connection [BAD]>"
    # at WARNING whenever the server dropped a pooled connection; the store replaces
    # it and says so itself. Format its lines like ours, and show the pool's chatter
    # only at DEBUG.
    driver = logging.getLogger("psycopg")
    driver.addHandler(handler)
    driver.propagate = False
    logging.getLogger("psycopg.pool").setLevel("DEBUG" if level == "DEBUG" else "ERROR")
    return logger, handler


async def run_worker(args: argparse.Namespace) -> int:
    """Run the ``worker`` command: return 0 after a signal stopped the worker."""
    # Trio re-delivers, when the receiver closes, a signal that arrived after the
    # stop had finished; by then the worker is done and exits 0, so the handlers
    # it restores ignore the two signals rather than kill the process.
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _STOP_SIGNALS}
    try:
        return await _run_worker(args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _run_worker(args: argparse.Namespace) -> int:
    install = load_app(args.app)
    spec: StoreSpec = args.store
    # Signals are caught from here on: one during start-up stops the worker as
    # soon as it runs, instead of killing it halfway through opening the store.
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        logger, handler = _configure_logging(args.log_level)
        try:
            storage = spec.create(
                lease_duration=args.lease_duration, max_connections=max(4, args.concurrency)
            )
            runner = JobRunner(
                concurrency=args.concurrency,
                poll_interval=args.poll_interval,
                storage=storage,
                logger=logger,
            )
            try:
                await install(runner)
            except (TypeError, ValueError) as exc:
                raise CliError(f"{args.app}: {one_line(str(exc))}") from None
            except Exception as exc:
                raise CliError(f"{args.app}(runner) failed: {_describe(exc)}") from None
            types = registered_types(runner)
            if not types:
                raise CliError(f"{args.app} registered no handlers")
            await open_storage(storage, spec)
            events = _EventLog(logger.getChild("worker"))
            if events.logger.isEnabledFor(logging.WARNING):
                # Above WARNING nothing would be printed: spare every job its snapshots.
                events.attach(runner)
            metrics = _metrics_app(args, runner, storage)
            try:
                await _serve(runner, signals, events, spec, types, args.concurrency, metrics)
            except StorageCorruptError as exc:
                # Trying again cannot help: stop with one line, not a traceback a second.
                raise StoreUnusableError(
                    f"worker stopped: {one_line(str(exc))}; jobs that were running go"
                    " back to pending once the store is repaired"
                ) from None
        finally:
            for name in _LOGGERS:
                logging.getLogger(name).removeHandler(handler)
    return 0


async def _serve(
    runner: JobRunner,
    signals: Any,
    events: _EventLog,
    spec: StoreSpec,
    types: list[str],
    concurrency: int,
    metrics: tuple[Any, str, int] | None = None,
) -> None:
    log = events.logger
    async with runner:
        log.info(
            "worker %s (pid %d) started on %s: concurrency %d, job types %s",
            runner.worker_id,
            os.getpid(),
            spec.describe(),
            concurrency,
            ", ".join(types),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_warn_of_unhandled_jobs, runner, log)
            if metrics is not None:
                app, host, port = metrics
                try:
                    bound = await nursery.start(
                        partial(import_dashboard().serve, app, host=host, port=port)
                    )
                except OSError as exc:
                    raise CliError(f"cannot serve metrics on {host}:{port}: {exc}") from None
                log.info("metrics on http://%s:%d/metrics", host, bound)

            async def stop(graceful: bool) -> None:
                await runner.stop(graceful)
                nursery.cancel_scope.cancel()

            received = 0
            async for signum in signals:
                received += 1
                name = signal.Signals(signum).name
                if received == 1:
                    log.info(
                        "%s: stopping after the running jobs finish (send it again to force)",
                        name,
                    )
                    nursery.start_soon(stop, True)
                elif received == 2:
                    log.info("%s: cancelling the running jobs; they will run again later", name)
                    nursery.start_soon(stop, False)
                else:
                    log.info("%s: already stopping", name)
    log.info("worker stopped: %s", events.summary())
