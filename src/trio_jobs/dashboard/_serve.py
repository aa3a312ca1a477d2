"""Serving an ASGI app with Hypercorn's Trio worker until the caller's scope is cancelled."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve


async def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` with Hypercorn until cancelled.

    Under ``nursery.start`` it returns the port actually bound, once the app's
    lifespan has started and the socket accepts connections.

    Args:
        app: An ASGI application, such as :func:`create_app`'s.
        host: The address to listen on.
        port: The TCP port; 0 picks a free one.
        task_status: Given by ``nursery.start``.

    Raises:
        OSError: the address is in use or cannot be bound.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config, mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
