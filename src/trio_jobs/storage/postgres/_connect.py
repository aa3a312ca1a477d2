"""Every connection a :class:`PostgresStorage` opens, and what it runs on them first.

The driver is imported only when a store is used, so the package imports without
psycopg. Pooled connections retry once on a fresh connection when theirs died
(:func:`with_connection`); the migration and the LISTEN connection are opened
outside the pool. All of it runs in worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import _sql as sql

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Connection = psycopg.Connection[tuple[Any, ...]]

logger = logging.getLogger("trio_jobs.postgres")

T = TypeVar("T")

CONNECT_KWARGS: Final[dict[str, Any]] = {
    "connect_timeout": 5,
    # A LISTEN connection only reads; keepalives notice a silently dead peer.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def import_driver() -> type[ConnectionPool]:
    """Import psycopg and psycopg_pool, or say how to install them.

    Returns:
        The pool class.

    Raises:
        ImportError: psycopg or psycopg_pool is missing.
    """
    try:
        import psycopg  # noqa: F401
        from psycopg_pool import ConnectionPool
    except ImportError as exc:
        raise ImportError(
            "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'trio-jobs[postgres]'"
        ) from exc
    return ConnectionPool


def session_kwargs(dsn: str, schema: str, role: str = "") -> dict[str, Any]:
    """Return the connection arguments that name a session ``trio_jobs:<schema><role>``."""
    from psycopg.conninfo import conninfo_to_dict

    # Name our sessions (unless the DSN does) so pg_stat_activity shows whose they are.
    if "application_name" in conninfo_to_dict(dsn):
        return {}
    return {"application_name": f"trio_jobs:{schema}{role}"}


def configure_connection(conn: Connection) -> None:
    """Prepare a new pooled connection."""
    # Timestamps come back as UTC datetimes whatever the server's default zone.
    conn.execute("SET TIME ZONE 'UTC'")


def with_connection(pool: ConnectionPool[Connection], fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` on a pooled connection (in a worker thread).

    If the connection turns out to be dead (say, its backend was terminated
    while it sat in the pool), the pool is checked and ``fn`` runs once more on a
    fresh connection. Every statement the store sends is one transaction that
    either reads, is fenced, or is idempotent, so a retry cannot apply twice what
    was meant once; a claim whose answer was lost leaves jobs that are rescued
    when their lease expires.
    """
    import psycopg

    used: Connection | None = None
    try:
        with pool.connection() as conn:
            used = conn
            return fn(conn)
    except psycopg.OperationalError as exc:
        if used is None or not used.closed:
            raise
        logger.warning(
            "PostgreSQL connection lost (%s); retrying on a fresh connection", str(exc).strip()
        )
    pool.check()
    with pool.connection() as conn:
        return fn(conn)


def migrate_schema(dsn: str, schema: str, statements: sql.Statements) -> int:
    """Bring ``schema`` up to date on a connection of its own; return its version."""
    import psycopg

    with psycopg.connect(
        dsn,
        connect_timeout=CONNECT_KWARGS["connect_timeout"],
        **session_kwargs(dsn, schema, ":migrate"),
    ) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.advisory_key(schema),))
        # Look before creating: a worker whose role may not create anything
        # must still start on a schema someone migrated for it.
        row = conn.execute(statements.existing, {"schema": schema}).fetchone()
        schema_exists, table_exists = row if row else (False, False)
        if not schema_exists:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        if not table_exists:
            conn.execute(statements.schema_version_table)
        row = conn.execute(statements.current_version).fetchone()
        version = int(row[0]) if row else 0
        if version > sql.LATEST_VERSION:
            logger.warning(
                "schema %s is at version %d, newer than this trio_jobs knows (%d)",
                schema,
                version,
                sql.LATEST_VERSION,
            )
        for target, build in sql.MIGRATIONS:
            if target <= version:
                continue
            for statement in build(f'"{schema}"'):
                conn.execute(statement)
            conn.execute(statements.record_version, (target,))
            logger.info("migrated schema %s to version %d", schema, target)
            version = target
        return version


def check_schema(dsn: str, schema: str, statements: sql.Statements) -> int:
    """Return the version of ``schema``, changing nothing (a read-only opening).

    Raises:
        StorageCorruptError: the schema, or its trio_jobs tables, are missing, or
            older than this code's (a writable opening migrates them).
    """
    import psycopg

    from ..._exceptions import StorageCorruptError

    with psycopg.connect(
        dsn,
        connect_timeout=CONNECT_KWARGS["connect_timeout"],
        **session_kwargs(dsn, schema, ":check"),
    ) as conn:
        row = conn.execute(statements.existing, {"schema": schema}).fetchone()
        schema_exists, table_exists = row if row else (False, False)
        if not table_exists:
            what = "it has no trio_jobs tables" if schema_exists else "it does not exist"
            raise StorageCorruptError(
                f"no trio_jobs schema named {schema!r} here ({what}; a worker or"
                " `trio-jobs migrate` creates it)"
            )
        row = conn.execute(statements.current_version).fetchone()
        version = int(row[0]) if row else 0
        if version < sql.LATEST_VERSION:
            # Reading it as it is would fail on whatever a later migration added.
            raise StorageCorruptError(
                f"schema {schema!r} is at version {version}, older than this trio_jobs"
                f" reads ({sql.LATEST_VERSION}): start a worker or run `trio-jobs migrate`"
            )
        return version


def connect_listener(dsn: str, schema: str, statements: sql.Statements) -> Connection:
    """Open the LISTEN connection (outside the pool) and listen on the store's channels."""
    import psycopg

    conn = psycopg.connect(
        dsn, autocommit=True, **CONNECT_KWARGS, **session_kwargs(dsn, schema, ":listen")
    )
    try:
        for statement in statements.listen:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn
