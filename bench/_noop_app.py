"""What bench/postgres.py's worker processes run: the same two tasks for every queue.

- ``noop`` does nothing. The first one a process runs writes ``time.time()`` to
  the file ``$BENCH_MARKS``: the moment the drain's clock starts (the worker is
  up and has its first job).
- ``latency`` takes ``time.time()`` on its first line and appends ``now - t0``
  to the file ``$BENCH_LATENCY``, where ``t0`` is the ``time.time()`` the
  producer took just before calling submit (same machine, same clock).

The workers import this module from the current directory (they run with
``cwd=bench/``)::

    python -m trio_jobs worker _noop_app:HANDLERS --dsn DSN --schema S --concurrency 10
    python -m procrastinate --app=_noop_app.procrastinate_app worker --concurrency=10
    python -m saq _noop_app.saq_settings

The peers' objects are built on first use from ``$BENCH_DSN`` (a ``postgresql://``
URL whose ``options`` set the search_path to the benchmark's schema), so the
trio_jobs worker never imports procrastinate or saq.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from trio_jobs import Job, JobContext

#: Connection pool size for the peers' workers: the trio-jobs worker opens
#: max(4, concurrency) connections, so 10 slots + the listener, roughly.
PEER_POOL_SIZE = 12
CONCURRENCY = 10


# -- what every handler does ----------------------------------------------------------------


class _Marks:
    """Per-process record of the first no-op job's start."""

    first_start: float | None = None


def _noop_started(now: float) -> None:
    if _Marks.first_start is None:
        _Marks.first_start = now
        path = os.environ.get("BENCH_MARKS")
        if path:
            Path(path).write_text(repr(now))


def _latency_started(now: float, t0: float) -> None:
    with open(os.environ["BENCH_LATENCY"], "a") as out:
        out.write(f"{now - t0!r}\n")


def with_params(dsn: str, **params: str) -> str:
    """Return the URL ``dsn`` with libpq parameters added to its query string."""
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"the benchmark needs a postgresql:// URL DSN, got {dsn!r}")
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params.items())
    return f"{dsn}{'&' if '?' in dsn else '?'}{query}"


def with_search_path(dsn: str, schema: str) -> str:
    """Return the URL ``dsn`` with libpq ``options`` that make ``schema`` the search_path.

    procrastinate and saq create their tables unqualified, so this puts each run
    in its own schema. saq's ``Queue.from_url`` needs the URL form.
    """
    return with_params(dsn, options=f"-c search_path={schema}")


# -- trio_jobs ------------------------------------------------------------------------------


async def noop(job: Job[Any], ctx: JobContext[Any]) -> None:
    """A trio_jobs no-op job."""
    _noop_started(time.time())
    await trio.lowlevel.checkpoint()


async def latency(job: Job[Any], ctx: JobContext[Any]) -> None:
    """A trio_jobs job that records how long after its submit it started."""
    now = time.time()
    _latency_started(now, job.payload["t0"])
    await trio.lowlevel.checkpoint()


HANDLERS = {"noop": noop, "latency": latency}


# -- procrastinate --------------------------------------------------------------------------


def make_procrastinate_app(conninfo: str) -> Any:
    """Return a procrastinate App on ``conninfo`` with the tasks ``noop`` and ``latency``."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=conninfo, min_size=1, max_size=PEER_POOL_SIZE
        ),
        worker_defaults={"concurrency": CONCURRENCY},
    )

    @app.task(name="noop")
    async def proc_noop() -> None:
        _noop_started(time.time())

    @app.task(name="latency")
    async def proc_latency(t0: float) -> None:
        now = time.time()
        _latency_started(now, t0)

    return app


# -- saq ------------------------------------------------------------------------------------


def make_saq_queue(url: str) -> Any:
    """Return saq's PostgreSQL queue on ``url`` (``saq.Queue.from_url``)."""
    from saq import Queue

    return Queue.from_url(url, min_size=1, max_size=PEER_POOL_SIZE)


async def saq_noop(ctx: Any) -> None:
    """A saq no-op job."""
    _noop_started(time.time())


async def saq_latency(ctx: Any, *, t0: float) -> None:
    """A saq job that records how long after its enqueue it started."""
    now = time.time()
    _latency_started(now, t0)


def saq_settings() -> dict[str, Any]:
    """The saq worker's settings (``saq _noop_app.saq_settings`` calls this)."""
    return {
        "queue": make_saq_queue(os.environ["BENCH_DSN"]),
        "functions": [("noop", saq_noop), ("latency", saq_latency)],
        "concurrency": CONCURRENCY,
    }


def __getattr__(name: str) -> Any:
    # ``procrastinate --app=_noop_app.procrastinate_app`` looks the app up here.
    if name == "procrastinate_app":
        return make_procrastinate_app(os.environ["BENCH_DSN"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
