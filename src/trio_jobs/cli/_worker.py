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

from .._records import Job
from .._runner import JobRunner
from ._dashboard import import_dashboard
from ._errors import CliError, UsageError
from ._format import (
    argument_type,
    attempts_text,
    format_seconds,
    one_line,
    parse_positive_duration,
    parse_positive_int,
)
from ._store import StoreSpec, open_storage

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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def registered_types(runner: JobRunner) -> list[str]:
    """Return the job types ``runner`` has handlers for."""
    return sorted(runner.job_types)


class _EventLog:
    """Logs one line per job event, and counts outcomes for the closing line."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.counts = {"completed": 0, "failed": 0, "retried": 0, "timed out": 0, "cancelled": 0}

    def attach(self, runner: JobRunner) -> None:
        runner.on("job:started", self.started)
        runner.on("job:completed", self.completed)
        runner.on("job:retrying", self.retrying)
        runner.on("job:failed", self.failed)
        runner.on("job:timeout", self.timed_out)
        runner.on("job:cancelled", self.cancelled)

    def _line(self, job: Job[Any], what: str, *args: object) -> None:
        self.logger.info(
            "job %s %s attempt %s " + what, job.id, job.type, attempts_text(job), *args
        )

    def started(self, job: Job[Any]) -> None:
        self._line(job, "started")

    def completed(self, job: Job[Any], result: Any) -> None:
        self.counts["completed"] += 1
        self._line(job, "completed in %s", format_seconds(job.execution_time))

    def retrying(self, job: Job[Any], attempt: int, delay: float) -> None:
        self.counts["retried"] += 1
        error = job.last_error
        reason = f"{error.type}: {one_line(error.message, 200)}" if error else "error"
        self._line(job, "failed, retrying in %s: %s", format_seconds(delay), reason)

    def failed(self, job: Job[Any], error: BaseException) -> None:
        self.counts["failed"] += 1
        self._line(job, "failed for good: %s", _describe(error))

    def timed_out(self, job: Job[Any]) -> None:
        self.counts["timed out"] += 1
        limit = "its timeout" if job.timeout is None else format_seconds(job.timeout)
        self._line(job, "timed out after %s", limit)

    def cancelled(self, job: Job[Any]) -> None:
        self.counts["cancelled"] += 1
        self.logger.info("job %s %s cancelled", job.id, job.type)


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
            if events.logger.isEnabledFor(logging.INFO):
                # Below INFO nothing would be printed: spare every job its snapshots.
                events.attach(runner)
            metrics = _metrics_app(args, runner, storage)
            await _serve(runner, signals, events, spec, types, args.concurrency, metrics)
        finally:
            logging.getLogger("trio_jobs").removeHandler(handler)
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
    summary = ", ".join(f"{n} {what}" for what, n in events.counts.items() if n)
    log.info("worker stopped (%s)", summary or "no jobs run")
