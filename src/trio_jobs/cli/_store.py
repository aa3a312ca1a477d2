"""Which store a command works on: ``--db``/``--dsn``/``--schema``, then the environment."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import attrs
import trio

from ..storage._base import JobStorage
from ._errors import CliError, UsageError
from ._format import one_line

DEFAULT_DB = "trio_jobs.db"
DEFAULT_SCHEMA = "trio_jobs"


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


__all__ = ["DEFAULT_DB", "DEFAULT_SCHEMA", "StoreSpec", "open_storage", "store_spec"]
