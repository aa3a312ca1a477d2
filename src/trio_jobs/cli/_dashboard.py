"""``trio-jobs dashboard``: serve the web dashboard until stopped; and the worker's metrics."""

from __future__ import annotations

import argparse
import signal
from functools import partial
from typing import Any

import trio

from ._errors import CliError
from ._format import argument_type
from ._store import StoreSpec, open_storage

_MISSING = (
    "the dashboard needs the 'dashboard' extra: pip install 'trio-jobs[dashboard]'"
    " (starlette, jinja2, hypercorn, prometheus-client)"
)


def import_dashboard() -> Any:
    """The ``trio_jobs.dashboard`` module, or a :class:`CliError` naming the extra."""
    try:
        from .. import dashboard
    except ImportError as exc:
        raise CliError(f"{_MISSING}; missing: {exc.name}") from None
    return dashboard


def parse_port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is 0 to 65535, not {port}")
    return port


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``dashboard`` command's arguments to its parser."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=argument_type(parse_port), default=8000, help="TCP port (8000)"
    )
    parser.add_argument(
        "--read-only", action="store_true", help="show no actions and refuse them (403)"
    )


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port`` and ``--metrics-host`` to the worker's parser."""
    parser.add_argument(
        "--metrics-port",
        type=argument_type(parse_port),
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs trio-jobs[dashboard])",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics listen on (127.0.0.1; 0.0.0.0 for a scraper elsewhere)",
    )


async def cmd_dashboard(args: argparse.Namespace) -> int:
    """``dashboard``: serve the dashboard of the store until SIGINT or SIGTERM."""
    dashboard = import_dashboard()
    spec: StoreSpec = args.store
    storage = spec.create(max_connections=4)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await open_storage(storage, spec, must_exist=True)
        try:
            app = dashboard.create_app(storage, read_only=args.read_only)
            async with trio.open_nursery() as nursery:
                try:
                    port = await nursery.start(
                        partial(dashboard.serve, app, host=args.host, port=args.port)
                    )
                except OSError as exc:
                    raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
                mode = " (read-only)" if args.read_only else ""
                print(
                    f"trio-jobs dashboard of {spec.describe()}{mode}:"
                    f" http://{args.host}:{port}/  (Ctrl+C to stop)",
                    flush=True,
                )
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
        finally:
            with trio.CancelScope(shield=True):
                await storage.close()
    return 0
