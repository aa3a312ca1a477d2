"""What the PostgreSQL tests share: stores on the test's schema, and admin statements.

Statements run on a connection of their own, outside any store, as an operator's
``psql`` would.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import psycopg
import pytest
import trio

from trio_jobs import PostgresStorage

PG_DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")

MakeStore = Callable[..., Any]


@pytest.fixture
async def make_store(pg_schema: str) -> AsyncIterator[MakeStore]:
    """Open stores on this test's schema; all are closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(**kwargs: Any) -> PostgresStorage:
            kwargs.setdefault("schema", pg_schema)
            store = PostgresStorage(PG_DSN, **kwargs)
            return await stack.enter_async_context(store)

        yield make


def admin(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run ``query`` on a fresh autocommit connection; its rows, if any."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


async def admin_async(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """:func:`admin` from Trio, in a worker thread."""
    return await trio.to_thread.run_sync(admin, query, params)
