"""Shared fixtures: one factory per store, so durable behaviour is tested on each."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

#: The PostgreSQL tests' shared fixture (make_store) lives beside their admin helpers.
pytest_plugins = ["pg_admin"]

PG_DSN = os.environ.get("TRIO_JOBS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Any:
    """A fresh PostgreSQL schema name for this test, dropped afterwards."""
    schema = f"tj_test_{uuid.uuid4().hex[:12]}"
    yield schema
    _drop_schema(schema)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A database file path in this test's own temporary folder."""
    return tmp_path / "jobs.db"


StoreFactory = Callable[..., Any]


def _factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if kind == "memory":
        from trio_jobs import MemoryStorage

        shared: dict[str, Any] = {}

        def make_memory(**kwargs: Any) -> Any:
            if "store" not in shared:
                shared["store"] = MemoryStorage(**kwargs)
            return shared["store"]

        return make_memory
    if kind == "sqlite":
        from trio_jobs import SQLiteStorage

        path = tmp_path / "jobs.db"
        return lambda **kwargs: SQLiteStorage(path, **kwargs)

    from trio_jobs import PostgresStorage

    schema = f"tj_test_{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: _drop_schema(schema))
    return lambda **kwargs: PostgresStorage(PG_DSN, schema=schema, **kwargs)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Make unopened stores of each kind; every call shares the same data.

    Call it as ``store_factory(lease_duration=...)``. Two calls give two store
    objects on the same database (two "processes"), except for ``memory``, where
    the same object comes back (memory cannot be shared between objects).
    """
    return _factory(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Like ``store_factory``, for the durable stores only (crash and restart tests)."""
    return _factory(request.param, request, tmp_path)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Any]:
    """An opened store of each kind, closed after the test."""
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
