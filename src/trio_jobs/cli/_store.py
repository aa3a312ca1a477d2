"""Which store a command works on: ``--db``/``--dsn``/``--schema``, then the environment."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence

import attrs
import trio

from .._exceptions import StorageCorruptError
from .._records import WorkerInfo
from ..storage._base import JobStorage
from ._errors import CliError, StoreUnusableError, UsageError
from ._format import one_line

DEFAULT_DB = "trio_jobs.db"
DEFAULT_SCHEMA = "trio_jobs"
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,54}")


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

    def to_json(self) -> dict[str, str]:
        """Name the store for ``--json`` output."""
        if self.kind == "sqlite":
            return {"store": "sqlite", "path": self.location}
        if self.kind == "postgres":
            return {"store": "postgres", "schema": self.schema}
        return {"store": "memory"}

    def create(
        self, *, lease_duration: float = 30.0, max_connections: int = 10, read_only: bool = False
    ) -> JobStorage:
        """Make the (unopened) store; ``read_only`` creates and migrates nothing."""
        from ..storage._memory import MemoryStorage
        from ..storage.postgres import PostgresStorage
        from ..storage.sqlite import SQLiteStorage

        if self.kind == "sqlite":
            return SQLiteStorage(self.location, lease_duration=lease_duration, read_only=read_only)
        if self.kind == "postgres":
            try:
                return PostgresStorage(
                    self.location,
                    schema=self.schema,
                    lease_duration=lease_duration,
                    max_connections=max_connections,
                    read_only=read_only,
                )
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        return MemoryStorage(lease_duration=lease_duration)


def store_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> StoreSpec:
    """Choose the store from ``--db``/``--dsn``, then the environment, then the default.

    Raises:
        UsageError: both a file and a DSN were given.
    """
    if args.schema is not None:
        schema = check_schema(args.schema, "--schema")
    elif environ.get("TRIO_JOBS_SCHEMA"):
        schema = check_schema(environ["TRIO_JOBS_SCHEMA"], "TRIO_JOBS_SCHEMA")
    else:
        schema = DEFAULT_SCHEMA
    if args.db is not None and args.dsn is not None:
        raise UsageError("give either --db (SQLite) or --dsn (PostgreSQL), not both")
    if args.dsn is not None:
        return StoreSpec("postgres", args.dsn, schema)
    if args.db is not None:
        return StoreSpec("sqlite", _sqlite_path(args.db, "--db"))
    env_db, env_dsn = environ.get("TRIO_JOBS_DB"), environ.get("TRIO_JOBS_DSN")
    if env_db and env_dsn:
        raise UsageError(
            "both TRIO_JOBS_DB and TRIO_JOBS_DSN are set: unset one, or pass --db or --dsn"
        )
    if env_dsn:
        return StoreSpec("postgres", env_dsn, schema)
    if env_db:
        return StoreSpec("sqlite", _sqlite_path(env_db, "TRIO_JOBS_DB"))
    return StoreSpec("sqlite", _sqlite_path(DEFAULT_DB, "--db"))


def check_schema(schema: str, source: str) -> str:
    """Check a PostgreSQL schema name as given on the command line or in the environment.

    PostgreSQL folds unquoted names to lower case and trio_jobs quotes them, so
    ``NewUser_Probe`` would be a second schema beside ``newuser_probe`` that a
    ``psql`` user cannot name without quotes: upper case is refused, with the
    lower-case name suggested.

    Raises:
        UsageError: the name is empty, has upper-case letters, or is not an identifier.
    """
    if not schema.strip():
        raise UsageError(f"{source} must not be empty (the default is {DEFAULT_SCHEMA})")
    if not _SCHEMA_RE.fullmatch(schema):
        raise UsageError(
            f"{source} {schema!r} is not a schema name: use lower-case letters, digits"
            " and underscores, starting with a letter or underscore"
        )
    if schema != schema.lower():
        raise UsageError(
            f"{source} {schema!r} has upper-case letters, which PostgreSQL keeps only in"
            f" quoted names: use {schema.lower()!r}"
        )
    return schema


def _sqlite_path(path: str, source: str) -> str:
    """The absolute path of an SQLite file, so that messages say which file it was."""
    if not path.strip():
        raise UsageError(f"{source} must not be empty")
    return os.path.abspath(os.path.expanduser(path))


async def unhandled_types(storage: JobStorage, workers: Sequence[WorkerInfo]) -> dict[str, int]:
    """The job types with waiting jobs that none of ``workers`` claims, and how many each.

    Such jobs stay pending until a worker with a handler for their type starts
    (a typo in a type, a worker not deployed): nothing else says so.
    """
    count = getattr(storage, "waiting_by_type", None)
    if count is None:
        await trio.lowlevel.checkpoint()
        return {}
    waiting: dict[str, int] = await count()
    handled: set[str] = set()
    for worker in workers:
        handled |= worker.job_types
    return {t: n for t, n in sorted(waiting.items()) if t not in handled}


def unhandled_text(unhandled: Mapping[str, int]) -> str:
    """Say which types no live worker handles, in one line."""
    each = ", ".join(f"{n} of type {t!r}" for t, n in unhandled.items())
    total = sum(unhandled.values())
    return (
        f"{total} waiting job{'' if total == 1 else 's'} ({each}) that no live worker"
        " handles: they stay pending until a worker with a handler for their type starts"
    )


async def open_storage(storage: JobStorage, spec: StoreSpec, *, must_exist: bool = False) -> None:
    """Open ``storage``, turning any failure into a one-line :class:`CliError`.

    Args:
        storage: The store ``spec`` made.
        spec: What it is, for the message.
        must_exist: Refuse to create a missing store (commands that read or change
            existing jobs: a typo in ``--db`` or ``--schema`` must not look like an
            empty queue). The store is first opened read-only, which creates
            nothing and checks that it holds trio_jobs tables; then ``storage`` is
            opened (and migrated, if it is older).
    """
    if must_exist:
        if spec.kind == "sqlite" and not await trio.Path(spec.location).exists():
            raise StoreUnusableError(
                f"no database at {spec.location} (a worker or `trio-jobs migrate` creates"
                " it; pass --db PATH or set TRIO_JOBS_DB)"
            )
        if spec.kind != "memory" and not getattr(storage, "read_only", False):
            probe = spec.create(max_connections=1, read_only=True)
            await _open(probe, spec)
            await probe.close()
    await _open(storage, spec)


async def _open(storage: JobStorage, spec: StoreSpec) -> None:
    try:
        await storage.open()
    except StorageCorruptError as exc:
        raise StoreUnusableError(one_line(str(exc))) from None
    except Exception as exc:
        raise CliError(f"cannot open {spec.describe()}: {one_line(str(exc))}") from None


__all__ = [
    "DEFAULT_DB",
    "DEFAULT_SCHEMA",
    "StoreSpec",
    "check_schema",
    "open_storage",
    "store_spec",
    "unhandled_text",
    "unhandled_types",
]
