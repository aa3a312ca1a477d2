"""The table of :class:`SQLiteStorage`: migrations, column lists, and rows <-> jobs.

Times are stored as wall-clock unix seconds (``REAL``) and JSON fields as text;
:func:`encode_record` encodes every field that can fail before anything is written.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Final, TypeAlias

from ..._exceptions import StorageCorruptError
from ..._records import Job, JobPriority, JobStatus, WorkerInfo
from .._codec import (
    BatchCodec,
    decode_error,
    decode_json,
    decode_retry,
    encode_error,
    encode_json,
    encode_retry,
)

#: Migration step 3 (issue 14), appended to ``MIGRATIONS``: the flow-control
#: tables and the index of ready jobs by tenant. Self-contained: it touches no
#: other step's objects.
FLOW_MIGRATION: Final = (
    # One row per job type with any setting; ``starts`` is the rate window: a JSON
    # array of the latest start times (unix seconds), at most ``rate_starts`` of them.
    """
    CREATE TABLE flow_limits (
        job_type               TEXT    PRIMARY KEY,
        max_running            INTEGER,
        max_running_per_tenant INTEGER,
        rate_starts            INTEGER,
        rate_seconds           REAL,
        fair_tenants           INTEGER NOT NULL DEFAULT 0,
        paused                 INTEGER NOT NULL DEFAULT 0,
        starts                 TEXT    NOT NULL DEFAULT '[]'
    )
    """,
    "CREATE TABLE flow_weights (tenant_id TEXT PRIMARY KEY, weight REAL NOT NULL)",
    # Fair turns: each tenant's pass and when it was last served (see _flow).
    """
    CREATE TABLE flow_turns (
        job_type TEXT NOT NULL,
        tenant   TEXT NOT NULL,
        pass     REAL NOT NULL,
        served   REAL NOT NULL,
        PRIMARY KEY (job_type, tenant)
    )
    """,
    # Per-tenant heads for limited types: a loose index scan finds the tenants with
    # ready jobs, then each tenant's best ones, without reading the whole queue.
    """
    CREATE INDEX jobs_tenant_ready ON jobs (type, tenant_id, priority DESC, run_at, seq)
        WHERE status IN ('pending', 'retrying')
    """,
)

# Each migration is a list of statements; migration N brings the schema from
# version N-1 to N. Append new ones, never edit or remove applied ones.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE jobs (
            seq              INTEGER PRIMARY KEY,  -- insertion order (rowid)
            id               TEXT    NOT NULL UNIQUE,
            type             TEXT    NOT NULL,
            payload          TEXT,                 -- JSON
            status           TEXT    NOT NULL,
            priority         INTEGER NOT NULL,
            attempts         INTEGER NOT NULL,
            max_attempts     INTEGER NOT NULL,
            created_at       REAL    NOT NULL,     -- unix seconds, UTC
            started_at       REAL,
            completed_at     REAL,
            run_at           REAL    NOT NULL,     -- eligible from
            timeout          REAL,
            last_error       TEXT,                 -- JSON ErrorInfo
            result           TEXT,                 -- JSON
            execution_time   REAL,
            progress         REAL,
            progress_message TEXT,
            metadata         TEXT    NOT NULL,     -- JSON object
            tenant_id        TEXT,
            retry            TEXT,                 -- JSON RetryConfig
            worker_id        TEXT,
            lease_expires_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )
        """,
        # The claim order; partial, so finished jobs cost nothing, and a claim
        # walks it in order and stops after `limit` rows (no sort). Queries name
        # it with INDEXED BY: the planner, misled by the status index, would
        # otherwise sort every ready job on each claim.
        """
        CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, seq, type)
            WHERE status IN ('pending', 'retrying')
        """,
        "CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'running'",
        "CREATE INDEX jobs_status ON jobs (status, type)",
    ),
    # 2: the workers table (issue 12). A claim by a registered worker carries no
    # lease of its own (lease_expires_at NULL): its worker's row stands for all of
    # them. jobs_claims finds a worker's row-covered claims (heartbeat, unregister,
    # rescue of a stale worker); jobs_leases keeps only claims with a lease of
    # their own, so neither index holds the other kind and a rescue reads only
    # what expired.
    (
        """
        CREATE TABLE workers (
            worker_id   TEXT    PRIMARY KEY,
            hostname    TEXT    NOT NULL,
            pid         INTEGER NOT NULL,
            started_at  REAL    NOT NULL,     -- unix seconds, UTC
            last_seen   REAL    NOT NULL,     -- the last heartbeat
            expires_at  REAL    NOT NULL,     -- stale (its jobs rescued) from then on
            concurrency INTEGER NOT NULL,
            running     INTEGER NOT NULL,
            job_types   TEXT    NOT NULL      -- JSON array
        )
        """,
        "CREATE INDEX workers_expiry ON workers (expires_at)",
        "DROP INDEX jobs_leases",
        """
        CREATE INDEX jobs_leases ON jobs (lease_expires_at)
            WHERE status = 'running' AND lease_expires_at IS NOT NULL
        """,
        """
        CREATE INDEX jobs_claims ON jobs (worker_id)
            WHERE status = 'running' AND lease_expires_at IS NULL
        """,
    ),
    # 3: the dashboard (issue 15). Keyset paging, newest first, by status, type or
    # tenant (each index ends with the rowid, seq), and throughput per minute.
    (
        "CREATE INDEX jobs_status_seq ON jobs (status)",
        "CREATE INDEX jobs_type_seq ON jobs (type)",
        "CREATE INDEX jobs_tenant_seq ON jobs (tenant_id) WHERE tenant_id IS NOT NULL",
        "CREATE INDEX jobs_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL",
    ),
    # 4: flow control (issue 14): per-type limits, tenant weights, fair turns, and the
    # index of ready jobs by tenant (FLOW_MIGRATION above).
    FLOW_MIGRATION,
    # 5: (issue 13) Unique jobs, schedules and retention; self-contained.
    # - unique_key: at most one active (pending, running, retrying) job per key, a
    #   partial unique index (a retry keeps its row, so it never conflicts).
    # - schedules: one row per schedule key (definition, last tick enqueued);
    #   schedule_ticks: one row per (key, tick), whose primary key makes exactly
    #   one runner win each tick (inserted in the job's transaction).
    # - jobs_retention: retention deletes the oldest final jobs by completed_at;
    #   leases: a named lease row, so one runner at a time does it.
    (
        "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
        """
        CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
            WHERE unique_key IS NOT NULL AND status IN ('pending', 'running', 'retrying')
        """,
        """
        CREATE TABLE schedules (
            key         TEXT PRIMARY KEY,
            job_type    TEXT NOT NULL,
            cron        TEXT,
            every       REAL,
            timezone    TEXT NOT NULL,
            last_run_at REAL                  -- unix seconds, UTC
        )
        """,
        """
        CREATE TABLE schedule_ticks (
            key           TEXT NOT NULL,
            scheduled_for REAL NOT NULL,      -- the tick, unix seconds, UTC
            job_id        TEXT NOT NULL,
            PRIMARY KEY (key, scheduled_for)
        ) WITHOUT ROWID
        """,
        """
        CREATE INDEX jobs_retention ON jobs (status, completed_at)
            WHERE completed_at IS NOT NULL
        """,
        """
        CREATE TABLE leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at REAL NOT NULL          -- unix seconds, UTC
        )
        """,
    ),
    # 6: jobs_retention (status, completed_at) answers every query jobs_completed
    # did, since each names the final statuses it counts: one index fewer to keep
    # up at every settle.
    ("DROP INDEX IF EXISTS jobs_completed",),
)

#: The schema version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

COLUMN_NAMES: Final = (
    "id", "type", "payload", "status", "priority", "attempts", "max_attempts", "created_at",
    "started_at", "completed_at", "run_at", "timeout", "last_error", "result", "execution_time",
    "progress", "progress_message", "metadata", "tenant_id", "retry", "unique_key",
)  # fmt: skip
COLUMNS: Final = ", ".join(COLUMN_NAMES)
#: The active (pending, running, retrying) job holding a unique_key, if any.
ACTIVE_HOLDER: Final = (
    "SELECT id FROM jobs INDEXED BY jobs_unique_key WHERE unique_key = ?"
    " AND status IN ('pending', 'running', 'retrying')"
)

INSERT: Final = f"INSERT INTO jobs ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
SELECT: Final = f"SELECT {COLUMNS} FROM jobs"
#: The shared columns of a run of a batch (see :func:`encode_runs`), one row written
#: once per run, so that each job's insert binds its id and payload alone: binding
#: twenty-one values is most of what a row costs the driver. A temporary table,
#: private to the connection that writes (created when it opens).
BATCH_ROW: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS trio_jobs_batch_row"
    f" ({', '.join(name for name in COLUMN_NAMES if name not in ('id', 'payload'))})"
)
_SHARED_COLUMNS: Final = ", ".join(name for name in COLUMN_NAMES if name not in ("id", "payload"))
#: Fill the batch row (after ``DELETE FROM temp.trio_jobs_batch_row``).
PUT_BATCH_ROW: Final = (
    f"INSERT INTO temp.trio_jobs_batch_row ({_SHARED_COLUMNS})"
    f" VALUES ({', '.join('?' * (len(COLUMN_NAMES) - 2))})"
)
#: Insert one job of a run: its id and payload, the rest from the batch row.
INSERT_FROM_BATCH_ROW: Final = (
    f"INSERT OR FAIL INTO jobs (id, payload, {_SHARED_COLUMNS})"
    f" SELECT ?, ?, {_SHARED_COLUMNS} FROM temp.trio_jobs_batch_row"
)
READY: Final = "status IN ('pending', 'retrying')"
CLAIM_ORDER: Final = "ORDER BY priority DESC, run_at, seq"
#: Every priority, highest first. ``priority IN (...)`` on the claim-order index
#: makes SQLite seek each priority's range ``run_at <= now`` on its own and stop
#: at the first row not yet due, still in claim order without a sort: jobs waiting
#: out a delay or a backoff are never walked past (see ``SQLiteStorage.claim``).
PRIORITY_ORDER: Final = tuple(int(p) for p in sorted(JobPriority, reverse=True))
PRIORITIES: Final = ", ".join(map(str, PRIORITY_ORDER))
#: Ready jobs due by a time (the parameter), walked in claim order.
DUE: Final = f"{READY} AND priority IN ({PRIORITIES}) AND run_at <= ?"

WORKER_COLUMNS: Final = (
    "worker_id, hostname, pid, started_at, last_seen, concurrency, running, job_types"
)


def next_due_sql(where: str) -> str:
    """The earliest ``run_at`` after now (``?``) among ready jobs: one seek per priority.

    ``where`` is a filter on the type (see ``type_filter``); its parameters follow
    the time, once per priority (see :func:`next_due`).
    """
    firsts = " UNION ALL ".join(
        f"SELECT * FROM (SELECT run_at FROM jobs INDEXED BY jobs_ready WHERE {READY}"
        f" AND priority = {priority} AND run_at > ?{where} ORDER BY run_at LIMIT 1)"
        for priority in PRIORITY_ORDER
    )
    return f"SELECT MIN(run_at) FROM ({firsts})"


def next_due(
    conn: sqlite3.Connection, sql: str, now: float, types: tuple[str, ...]
) -> float | None:
    """When the next ready job of ``types`` not due by ``now`` becomes due (None: none)."""
    row = conn.execute(sql, (now, *types) * len(PRIORITY_ORDER)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables on first use and apply the migrations this file lacks."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = _schema_version(conn, path)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version of a file opened read-only; change nothing.

    Raises:
        StorageCorruptError: The file has no trio_jobs tables (an empty file,
            another program's database), or a schema older or newer than this
            code's (an older one is migrated by a writable opening).
    """
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        what = "it has no tables" if not tables else "it has no schema_version table"
        raise StorageCorruptError(
            f"SQLite database {path} is not a trio_jobs SQLite database: {what}"
            " (a worker or `trio-jobs migrate` creates them)"
        )
    (current,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    if current > SCHEMA_VERSION:
        raise _too_new(path, current)
    if current < SCHEMA_VERSION:
        # Reading it as it is would fail on whatever a later migration added.
        raise StorageCorruptError(
            f"SQLite database {path} has schema version {current}, older than this"
            f" trio_jobs reads ({SCHEMA_VERSION}): start a worker or run `trio-jobs migrate`"
        )
    return int(current)


def _too_new(path: str, current: int) -> StorageCorruptError:
    return StorageCorruptError(
        f"{path} has schema version {current}, newer than this trio_jobs"
        f" understands ({SCHEMA_VERSION}): upgrade trio_jobs"
    )


def _schema_version(conn: sqlite3.Connection, path: str) -> int:
    """Return the file's schema version (creating the version table in a new file).

    Raises:
        StorageCorruptError: The file holds another program's ``jobs`` table, or a
            schema newer than this code knows.
    """
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        if "jobs" in tables:
            raise StorageCorruptError(
                f"{path} is not a trio_jobs SQLite database: it has a 'jobs' table"
                " but no schema_version table"
            )
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
    (current,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    if current > SCHEMA_VERSION:
        raise _too_new(path, current)
    return int(current)


# -- records <-> rows -------------------------------------------------------------------


def encode_record(job: Job[Any], codec: BatchCodec | None = None) -> tuple[Any, ...]:
    """Return a job's column values in ``COLUMNS`` order (``run_at`` may be ``None``).

    The JSON fields are encoded first, so a bad value fails before anything is written.
    A ``codec`` shared by a batch encodes its jobs' common metadata and retry once.
    """
    payload = encode_json(job.payload, "payload")
    if codec is None:
        metadata = encode_json(dict(job.metadata), "metadata")
        retry = encode_retry(job.retry)
    else:
        metadata = codec.metadata(job.metadata)
        retry = codec.retry(job.retry)
    result = None if job.result is None else encode_json(job.result, "result")
    return (
        job.id,
        job.type,
        payload,
        JobStatus(job.status).value,
        int(job.priority),
        job.attempts,
        job.max_attempts,
        job.created_at.timestamp(),
        _ts(job.started_at),
        _ts(job.completed_at),
        _ts(job.run_at),
        job.timeout,
        encode_error(job.last_error),
        result,
        job.execution_time,
        job.progress,
        job.progress_message,
        metadata,
        job.tenant_id,
        retry,
        job.unique_key,
    )


#: Every field ``encode_record`` reads except ``id`` and ``payload``, in column order.
_SHARED_FIELDS: Final = attrgetter(
    "type", "status", "priority", "attempts", "max_attempts", "created_at", "started_at",
    "completed_at", "run_at", "timeout", "last_error", "result", "execution_time", "progress",
    "progress_message", "metadata", "tenant_id", "retry", "unique_key",
)  # fmt: skip


#: A run of a batch: the first job's encoded columns (``COLUMN_NAMES`` order), and the
#: ``(id, payload)`` of every job of the run, the first included, which differ in
#: nothing else.
Run: TypeAlias = tuple[tuple[Any, ...], list[tuple[str, str | None]]]


def encode_runs(jobs: Sequence[Job[Any]], codec: BatchCodec) -> list[Run]:
    """Encode ``jobs`` in runs of consecutive jobs alike but for ``id`` and ``payload``.

    ``submit_many`` copies one template, so its jobs make one run: a job whose other
    fields equal the previous one's (one C-level tuple comparison, by identity
    first) has its payload encoded alone. Any other job starts a run, encoded in full.
    """
    runs: list[Run] = []
    shared: tuple[Any, ...] | None = None
    items: list[tuple[str, str | None]] = []
    for job in jobs:
        fields = _SHARED_FIELDS(job)
        if fields != shared:
            row = encode_record(job, codec)
            shared, items = fields, [(row[0], row[2])]
            runs.append((row, items))
        else:
            items.append((job.id, encode_json(job.payload, "payload")))
    return runs


def job_from_row(row: Sequence[Any]) -> Job[Any]:
    return Job(
        id=row[0],
        type=row[1],
        payload=decode_json(row[2]),
        status=_STATUSES[row[3]],
        priority=_PRIORITIES.get(row[4]) or JobPriority(row[4]),
        attempts=row[5],
        max_attempts=row[6],
        created_at=datetime.fromtimestamp(row[7], UTC),
        started_at=_dt(row[8]),
        completed_at=_dt(row[9]),
        run_at=_dt(row[10]),
        timeout=row[11],
        last_error=decode_error(row[12]),
        result=decode_json(row[13]),
        execution_time=row[14],
        progress=row[15],
        progress_message=row[16],
        metadata=decode_json(row[17]),
        tenant_id=row[18],
        retry=decode_retry(row[19]),
        unique_key=row[20],
    )


def encode_worker(info: WorkerInfo) -> tuple[Any, ...]:
    """Return a worker's columns of ``WORKER_COLUMNS`` but ``last_seen`` (the caller's now)."""
    return (
        info.worker_id,
        info.hostname,
        int(info.pid),
        info.started_at.timestamp(),
        int(info.concurrency),
        int(info.running),
        encode_json(sorted(info.job_types), "job_types"),
    )


def worker_from_row(row: Sequence[Any]) -> WorkerInfo:
    """Build a :class:`WorkerInfo` from a row of ``WORKER_COLUMNS``."""
    return WorkerInfo(
        worker_id=row[0],
        hostname=row[1],
        pid=row[2],
        started_at=datetime.fromtimestamp(row[3], UTC),
        last_seen=datetime.fromtimestamp(row[4], UTC),
        concurrency=row[5],
        running=row[6],
        job_types=frozenset(decode_json(row[7])),
    )


_STATUSES: Final = {status.value: status for status in JobStatus}
_PRIORITIES: Final = {int(priority): priority for priority in JobPriority}


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
