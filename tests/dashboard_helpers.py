"""Serving the dashboard in-process for tests: Hypercorn on a free port, an httpx client."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import httpx
import trio

from trio_jobs import JobRunner, RetryConfig
from trio_jobs.dashboard import create_app, serve


@asynccontextmanager
async def served(storage: Any, **options: Any) -> AsyncIterator[str]:
    """Serve ``create_app(storage, **options)``; yield its base URL."""
    app = create_app(storage, **options)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, app, host="127.0.0.1", port=0))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def client_of(storage: Any, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the served dashboard of ``storage``."""
    async with (
        served(storage, **options) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page holds no CSRF token"
    return match.group(1)


async def boom(job: Any, ctx: Any) -> None:
    raise ValueError(f"no such mailbox: {job.payload}")


async def ok(job: Any, ctx: Any) -> str:
    return "sent"


async def failed_job(storage: Any, payload: Any = "ada@example.com") -> str:
    """Run one job that fails for good (one attempt) on ``storage``; return its id."""
    runner = JobRunner(storage=storage, poll_interval=0.05)
    runner.register_handler("boom", boom)
    async with runner:
        handle = await runner.submit("boom", payload, retry=RetryConfig(max_attempts=1))
        with suppress(Exception):
            await handle.wait()
    return handle.id


class EventReader:
    """Reads the server-sent events of ``GET path`` over a plain TCP stream.

    (httpx's nested streaming generators cannot be left early without a warning.)
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = ""
        self.headers = ""

    @classmethod
    @asynccontextmanager
    async def open(cls, base_url: str, path: str = "/events") -> AsyncIterator[EventReader]:
        host, port = base_url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            await stream.send_all(request.encode())
            reader = cls(stream)
            reader.headers = await reader._read_until("\r\n\r\n")
            yield reader

    async def _read_until(self, marker: str) -> str:
        while marker not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the event stream")
            self._buffer += data.decode()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    async def next_html(self) -> str:
        """The HTML of the next ``overview`` event."""
        while True:
            line = await self._read_until("\n")
            if line.startswith("data: "):
                return str(json.loads(line[6:])["html"])
