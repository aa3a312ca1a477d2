r"""The table of :class:`PostgresStorage`: its migrations and every statement.

Kept apart from the Python that runs it so each statement can be read whole;
:mod:`._rows` turns a :class:`Job` into a row's values and back. Every
statement is built once per store for its schema (an identifier validated by the
store, always double-quoted here) and uses ``%(name)s`` parameters for values.

Columns hold JSON as ``text``, not ``jsonb``: ``jsonb`` normalises numbers
(``1e16`` comes back as the integer ``10000000000000000``), reorders object keys
and refuses ``\u0000``, so a payload would not come back exactly as it was
submitted. The store merges metadata in Python, in the same transaction that
reads it.

Two times govern scheduling: ``run_at`` is the job's public field (the wall-clock
estimate of when it may run, or NULL for "at once"), ``ready_at`` is the internal,
never-NULL key the claim orders and filters by (server clock: ``now() + delay``).

Delayed jobs (a ``delay`` at submit, a retry's backoff) are kept out of the claim's
path: ``delayed`` is true while such a job's ``ready_at`` may lie ahead, and the
index the claim walks holds only jobs that are not delayed. Each claim first takes
the delayed jobs whose time has come (an index on ``ready_at``, usually empty
where it starts) and promotes them, so a table full of jobs delayed by an hour
costs a claim nothing (see ``claim`` in :func:`build_statements`).

One row per live runner sits in ``workers`` (see :class:`WorkerRegistry
<trio_jobs.storage.WorkerRegistry>`): a registered worker's heartbeat renews its
row, not its jobs, and the rescue reads only the jobs of workers whose row went
stale, found through an index of running jobs by worker.
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

from ..._records import JobStatus

#: Columns that make a :class:`Job`, in the order ``row_to_job`` reads them,
#: followed by the two columns a claim sorts by.
JOB_COLUMNS: Final = (
    "id, type, payload, status, priority, attempts, max_attempts, created_at, started_at,"
    " completed_at, run_at, timeout, last_error, result, execution_time, progress,"
    " progress_message, metadata, tenant_id, retry, unique_key, ready_at, seq"
)

_READY = "status IN ('pending', 'retrying')"
#: Every status a job can have (the jobs table's CHECK constraint lists the same).
STATUSES: Final = tuple(status.value for status in JobStatus)
#: A claim's promotion takes at most this many delayed jobs whose time came; more
#: join the ready ones over the next claims, in the order they fell due.
PROMOTE_MAX: Final = 100
_FINAL = "('completed', 'failed', 'cancelled', 'timeout')"
_CLAIM_ORDER = "priority DESC, ready_at, seq"
# Whether an administrative write's run_at lies ahead (NULL: at once).
_LATER = "coalesce(%(run_at)s::timestamptz > now(), false)"


# Claims and heartbeats commit without waiting for their WAL to reach the disk
# (``SET LOCAL synchronous_commit = off``, as a CTE the statement joins so that it
# runs). Losing one in a *server* crash only makes a job run again, which
# at-least-once delivery allows anyway: a lost claim puts the job back to
# PENDING (its worker's settle is then refused by the fence), a lost heartbeat
# shortens a lease. Saves and settles stay durable: a submitted job, or a result
# someone may have read, must never vanish. On a busy disk a WAL flush costs
# milliseconds; this halves the flushes a worker waits for.
_ASYNC_COMMIT: Final = (
    "async_commit AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS setting)"
)


def _migration_1(s: str) -> tuple[str, ...]:
    return (
        f"""
        CREATE TABLE {s}.jobs (
            id               text PRIMARY KEY,
            seq              bigserial NOT NULL,
            type             text NOT NULL,
            payload          text NOT NULL,
            status           text NOT NULL CHECK (status IN
                ('pending', 'running', 'completed', 'failed', 'retrying', 'cancelled', 'timeout')),
            priority         smallint NOT NULL,
            attempts         integer NOT NULL DEFAULT 0,
            max_attempts     integer NOT NULL,
            created_at       timestamptz NOT NULL,
            started_at       timestamptz,
            completed_at     timestamptz,
            run_at           timestamptz,
            ready_at         timestamptz NOT NULL,
            timeout          double precision,
            last_error       text,
            result           text,
            execution_time   double precision,
            progress         double precision,
            progress_message text,
            metadata         text NOT NULL DEFAULT '{{}}',
            tenant_id        text,
            retry            text,
            worker_id        text,
            lease_expires_at timestamptz,
            cancel_requested boolean NOT NULL DEFAULT false,
            -- The claim or settle that last wrote the row: after a lost connection,
            -- a retry finds what its first try did instead of doing it twice.
            op_token         text
        )
        """,
        # The claim walks this index in order and stops after LIMIT rows.
        f"CREATE INDEX jobs_ready_idx ON {s}.jobs ({_CLAIM_ORDER}) WHERE {_READY}",
        # get_by_status, purge, the stats, and the rescue (running jobs are few). No
        # index on lease_expires_at: heartbeats then update rows in place (HOT).
        f"CREATE INDEX jobs_status_idx ON {s}.jobs (status, seq)",
    )


def _migration_2(s: str) -> tuple[str, ...]:
    return (
        # Delayed jobs leave the claim's index (see the module's docs). Adding a
        # column with a constant default rewrites nothing.
        f"ALTER TABLE {s}.jobs ADD COLUMN delayed boolean NOT NULL DEFAULT false",
        f"UPDATE {s}.jobs SET delayed = true WHERE {_READY} AND ready_at > now()",
        f"CREATE INDEX jobs_claim_idx ON {s}.jobs ({_CLAIM_ORDER}) WHERE {_READY} AND NOT delayed",
        f"CREATE INDEX jobs_delayed_idx ON {s}.jobs (ready_at) WHERE delayed AND {_READY}",
        # Replaced by jobs_claim_idx (an index, no data: the migration destroys nothing).
        f"DROP INDEX {s}.jobs_ready_idx",
        # The running jobs by worker: a stale worker's jobs, the workers holding
        # jobs without a row (one probe each), and their expired leases. Heartbeats
        # of workers without a row now update an indexed column (no longer HOT).
        f"CREATE INDEX jobs_worker_idx ON {s}.jobs (worker_id, lease_expires_at)"
        " WHERE status = 'running'",
        # One row per live runner; small, read whole. Room on each page for the
        # heartbeats' in-place (HOT) updates.
        f"""
        CREATE TABLE {s}.workers (
            worker_id   text PRIMARY KEY,
            hostname    text NOT NULL,
            pid         integer NOT NULL,
            started_at  timestamptz NOT NULL,
            last_seen   timestamptz NOT NULL,
            concurrency integer NOT NULL,
            running     integer NOT NULL,
            job_types   text[] NOT NULL,
            expires_at  timestamptz NOT NULL
        ) WITH (fillfactor = 50)
        """,
    )


def _migration_3(s: str) -> tuple[str, ...]:
    return (
        # The dashboard's keyset paging (newest first, ``seq < cursor``) walks one
        # of these backwards and stops after a page; with a status filter it walks
        # jobs_status_idx. A tenant index holds only jobs that have a tenant.
        # (Migration 7 replaces the first two: see there.)
        f"CREATE INDEX jobs_seq_idx ON {s}.jobs (seq)",
        f"CREATE INDEX jobs_type_seq_idx ON {s}.jobs (type, seq)",
        f"CREATE INDEX jobs_tenant_seq_idx ON {s}.jobs (tenant_id, seq)"
        " WHERE tenant_id IS NOT NULL",
        # Throughput per minute reads the last hour's ends; purge reads old ones.
        # (Dropped by migration 6: jobs_retention_idx serves both.)
        f"CREATE INDEX jobs_completed_idx ON {s}.jobs (completed_at)"
        " WHERE completed_at IS NOT NULL",
    )


def _migration_4_flow(s: str) -> tuple[str, ...]:
    """Flow control (issue 14): per-type limits, tenant weights, fair turns.

    Self-contained: new tables and one new index, nothing else touched.
    """
    return (
        # One row per job type with any setting. A limited claim locks the rows of
        # its types in key order (no deadlock between claimers). ``starts`` is the
        # rate window: the latest start times (epoch seconds), at most rate_starts.
        f"""
        CREATE TABLE {s}.flow_limits (
            job_type               text PRIMARY KEY,
            max_running            integer,
            max_running_per_tenant integer,
            rate_starts            integer,
            rate_seconds           double precision,
            fair_tenants           boolean NOT NULL DEFAULT false,
            paused                 boolean NOT NULL DEFAULT false,
            starts                 double precision[] NOT NULL DEFAULT '{{}}'
        )
        """,
        f"CREATE TABLE {s}.flow_weights (tenant_id text PRIMARY KEY,"
        " weight double precision NOT NULL)",
        f"""
        CREATE TABLE {s}.flow_turns (
            job_type text NOT NULL,
            tenant   text NOT NULL,
            pass     double precision NOT NULL,
            served   double precision NOT NULL,
            PRIMARY KEY (job_type, tenant)
        )
        """,
        # Per-tenant heads of a limited type: a loose index scan (recursive CTE) finds
        # the tenants with ready jobs, a LATERAL probe each one's best jobs.
        f"CREATE INDEX jobs_tenant_ready_idx ON {s}.jobs (type, tenant_id, {_CLAIM_ORDER})"
        f" WHERE {_READY}",
    )


def _migration_5(s: str) -> tuple[str, ...]:
    # (issue 13) Unique jobs, schedules and retention; self-contained.
    return (
        # At most one active job per unique_key: a partial unique index (River's
        # design). A retry or a rescue keeps the job's row, so never conflicts.
        f"ALTER TABLE {s}.jobs ADD COLUMN unique_key text",
        f"CREATE UNIQUE INDEX jobs_unique_key_idx ON {s}.jobs (unique_key)"
        " WHERE unique_key IS NOT NULL AND status IN ('pending', 'running', 'retrying')",
        # One row per schedule key: its definition and the last tick enqueued.
        f"""
        CREATE TABLE {s}.schedules (
            key         text PRIMARY KEY,
            job_type    text NOT NULL,
            cron        text,
            every       double precision,
            timezone    text NOT NULL,
            last_run_at timestamptz
        )
        """,
        # One row per (key, tick), inserted in the job's transaction: the primary
        # key lets exactly one runner win each tick (procrastinate's periodic_defers).
        f"""
        CREATE TABLE {s}.schedule_ticks (
            key           text NOT NULL,
            scheduled_for timestamptz NOT NULL,
            job_id        text NOT NULL,
            PRIMARY KEY (key, scheduled_for)
        )
        """,
        # Retention deletes the oldest final jobs of a status by completed_at.
        f"CREATE INDEX jobs_retention_idx ON {s}.jobs (status, completed_at)"
        f" WHERE status IN {_FINAL}",
    )


def _migration_6(s: str) -> tuple[str, ...]:
    # jobs_retention_idx (status, completed_at) answers every query that
    # jobs_completed_idx did, since each names the final statuses it counts: one
    # index fewer to keep up at every settle.
    return (f"DROP INDEX IF EXISTS {s}.jobs_completed_idx",)


def _migration_7(s: str) -> tuple[str, ...]:
    # A claim and a settle change a job's status, an indexed column, so neither
    # update is HOT: each writes an entry into every index whose predicate the new
    # row meets. Two ways to write fewer:
    # - Paging newest first needs no index on seq alone: :func:`newest_first`
    #   merges one walk of (status, seq) per status, and one (type, status, seq)
    #   index serves the type filter the same way, in place of (type, seq).
    # - Neither status index holds running jobs: they are few (at most every
    #   worker's concurrency), jobs_worker_idx holds them all, and a claim, which
    #   makes a job running, then writes only that index and the primary key.
    # Draining 5,000 jobs in one process: 42.1 -> 32.9 buffer accesses and
    # 15.8 -> 11.5 WAL records per job.
    running = "WHERE status <> 'running'"
    return (
        f"DROP INDEX IF EXISTS {s}.jobs_status_idx",
        f"CREATE INDEX jobs_status_idx ON {s}.jobs (status, seq) {running}",
        f"DROP INDEX IF EXISTS {s}.jobs_type_status_idx",
        f"CREATE INDEX jobs_type_status_idx ON {s}.jobs (type, status, seq) {running}",
        f"DROP INDEX IF EXISTS {s}.jobs_type_seq_idx",
        f"DROP INDEX IF EXISTS {s}.jobs_seq_idx",
    )


#: ``(version, builder)`` pairs, in order. Append only; never edit a released step.
MIGRATIONS: Final = (
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4_flow),
    (5, _migration_5),
    (6, _migration_6),
    (7, _migration_7),
)
LATEST_VERSION: Final = MIGRATIONS[-1][0]


def newest_first(jobs: str, where: str, limit: str) -> str:
    """Select the jobs of ``jobs`` matching ``where``, newest first, at most ``limit``.

    There is no index on ``seq`` alone (see migration 7): the statement takes the
    newest ``limit`` of each status, one walk of (status, seq) or, with a type in
    ``where``, of (type, status, seq), each stopping after ``limit`` rows, and
    merges them; the running jobs, few, come from jobs_worker_idx. ``where`` and
    ``limit`` are SQL (with placeholders); a ``NULL`` limit takes all.
    """
    branches = " UNION ALL ".join(
        f"({of_status(jobs, status, where, limit)})" for status in STATUSES
    )
    return f"SELECT * FROM ({branches}) AS newest ORDER BY seq DESC LIMIT {limit}"


def of_status(jobs: str, status: str, where: str, limit: str, order: str = "seq DESC") -> str:
    """Select the jobs of ``jobs`` in ``status`` matching ``where``, in ``order``.

    The status is written into the text, not passed: the planner then knows
    which index holds the rows (the status indexes leave running jobs to
    jobs_worker_idx, see migration 7), for every execution of a prepared plan.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    return (
        f"SELECT {JOB_COLUMNS} FROM {jobs} WHERE status = '{status}' AND {where}"
        f" ORDER BY {order} LIMIT {limit}"
    )


def _listing(jobs: str, status: str | None, typed: bool) -> str:
    """``list_jobs``: newest first, ``%(limit)s`` of them, of a status and a type if given."""
    where = "type = %(type)s" if typed else "true"
    if status is None:
        return newest_first(jobs, where, "%(limit)s")
    return of_status(jobs, status, where, "%(limit)s")


def advisory_key(schema: str) -> int:
    """Return the 64-bit advisory lock key serialising migrations of ``schema``."""
    digest = hashlib.blake2b(f"trio_jobs.migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _notify_changed(source: str) -> str:
    # One NOTIFY per 40 ids keeps payloads far below PostgreSQL's 8000-byte limit;
    # an id that is long or contains the separator is announced as "*" (wake all).
    return f"""
        SELECT pg_notify(%(changed_channel)s, string_agg(nid, E'\\n'))
        FROM (
            SELECT CASE WHEN octet_length(id) > 150 OR strpos(id, E'\\n') > 0 THEN '*'
                        ELSE id END AS nid,
                   (row_number() OVER ()) / 40 AS chunk
            FROM {source}
        ) AS ids
        GROUP BY chunk
    """


#: Claims of up to this many jobs write their limit into the statement's text.
#: PostgreSQL plans a prepared statement once (a generic plan) only when that
#: plan looks no worse than one made for the actual values; with ``LIMIT $1`` it
#: must guess the limit (a tenth of the table) and so re-plans every claim, which
#: cost more server time than running it. A literal limit keeps the generic plan
#: exact; the bound keeps the number of statement texts a connection prepares
#: small (psycopg keeps 100 per connection). Larger claims pass the limit as a
#: parameter and are planned each time, as before.
LITERAL_LIMIT_MAX: Final = 32


def _rescue(jobs: str, returning: str, victims: str, why: str) -> str:
    """A rescue: the jobs that the CTEs ``victims`` call ``expired`` (id, worker_id), locked.

    With attempts left a job goes back to PENDING; with none it ends FAILED; if its
    cancellation was requested it ends CANCELLED. ``last_error`` says which worker
    was lost during which attempt, and ``why``. Every rescued job is announced as
    changed, and new work if any went back to PENDING.
    """
    return f"""
        WITH RECURSIVE {victims},
        upd AS (
            UPDATE {jobs} AS j SET
                status = CASE WHEN j.cancel_requested THEN 'cancelled'
                              WHEN j.attempts < j.max_attempts THEN 'pending'
                              ELSE 'failed' END,
                last_error = CASE WHEN j.cancel_requested THEN j.last_error ELSE
                    json_build_object(
                        'message', format(
                            'worker %%s was lost ({why}) during attempt %%s',
                            expired.worker_id, j.attempts),
                        'type', 'WorkerLostError',
                        'traceback', NULL,
                        'attempt', j.attempts,
                        'timestamp', to_char(now() AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                        'retryable', j.attempts < j.max_attempts
                    )::text END,
                completed_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                                    THEN now() END,
                progress = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                                THEN j.progress END,
                progress_message = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts
                                        THEN j.progress_message END,
                worker_id = NULL,
                lease_expires_at = NULL,
                delayed = false
            -- The array makes the planner find each row by primary key, whatever
            -- it guesses of ``expired`` (a guess of thousands once read them all).
            FROM expired WHERE j.id = expired.id AND j.id = ANY(ARRAY(SELECT id FROM expired))
            RETURNING {returning}
        ),
        notes AS (
            {_notify_changed("upd")}
            UNION ALL
            SELECT pg_notify(%(work_channel)s, '0') FROM upd
            WHERE status = 'pending' HAVING count(*) > 0
        )
        SELECT * FROM upd WHERE (SELECT count(*) FROM notes) >= 0
    """


#: The columns a batch insert sends, with their types: each as one array (the
#: rows' values differ) or as one value for every row (see :class:`BatchInserts`).
BATCH_COLUMNS: Final = (
    ("id", "text"),
    ("type", "text"),
    ("payload", "text"),
    ("status", "text"),
    ("priority", "smallint"),
    ("attempts", "integer"),
    ("max_attempts", "integer"),
    ("created_at", "timestamptz"),
    ("started_at", "timestamptz"),
    ("completed_at", "timestamptz"),
    ("run_at", "timestamptz"),
    ("timeout", "double precision"),
    ("last_error", "text"),
    ("result", "text"),
    ("execution_time", "double precision"),
    ("progress", "double precision"),
    ("progress_message", "text"),
    ("metadata", "text"),
    ("tenant_id", "text"),
    ("retry", "text"),
    ("delay", "double precision"),
    ("unique_key", "text"),
)


class BatchInserts:
    """The statements that insert many jobs at once into one table, one per shape.

    A batch travels column by column: a column whose rows differ (ids, payloads)
    as one array through ``unnest``, a column every row shares (the type, the
    options of a ``submit_many``) as one value. Most columns of a batch are one
    value, so this sends and parses a fraction of what a record per row would
    (``bench/batches.py``). A shape is the set of array columns; its statement is
    built once. Each row is claimable after its ``delay``; its run_at says when,
    if delayed. Rows go in the order given, and a row whose id (or, with
    ``conflict=""``, whose unique key) is taken is skipped: ``RETURNING id``
    says which went in.
    """

    def __init__(self, jobs: str) -> None:
        self._jobs = jobs
        self._made: dict[tuple[frozenset[str], str], str] = {}

    def statement(self, arrays: frozenset[str], *, conflict: str = "(id)") -> str:
        """The insert for a batch whose ``arrays`` columns are arrays, the rest values."""
        made = self._made.get((arrays, conflict))
        if made is None:
            made = self._made[arrays, conflict] = self._build(arrays, conflict)
        return made

    def _build(self, arrays: frozenset[str], conflict: str) -> str:
        unknown = arrays - {name for name, _ in BATCH_COLUMNS}
        if unknown or "id" not in arrays:
            raise ValueError(f"not a batch shape: {sorted(arrays)}")
        unnested = [(name, kind) for name, kind in BATCH_COLUMNS if name in arrays]
        values = ", ".join(
            f"v.{name}" if name in arrays else f"%({name})s::{kind} AS {name}"
            for name, kind in BATCH_COLUMNS
        )
        sources = ", ".join(f"%({name})s::{kind}[]" for name, kind in unnested)
        names = ", ".join(name for name, _ in unnested)
        return f"""
            INSERT INTO {self._jobs} (id, type, payload, status, priority, attempts,
                max_attempts, created_at, started_at, completed_at, run_at, ready_at,
                timeout, last_error, result, execution_time, progress, progress_message,
                metadata, tenant_id, retry, op_token, delayed, unique_key)
            SELECT id, type, payload, status, priority, attempts, max_attempts,
                created_at, started_at, completed_at,
                CASE WHEN delay > 0 THEN now() + delay * interval '1 second' ELSE run_at END,
                now() + delay * interval '1 second',
                timeout, last_error, result, execution_time, progress, progress_message,
                metadata, tenant_id, retry, %(token)s,
                delay > 0 AND status IN ('pending', 'retrying'), unique_key
            FROM (
                SELECT {values}, v.ordinality
                FROM unnest({sources}) WITH ORDINALITY AS v({names}, ordinality)
            ) AS batch
            ORDER BY ordinality
            ON CONFLICT {conflict} DO NOTHING
            RETURNING id
        """


@attrs.frozen
class Statements:
    """Every statement the store runs, built for one schema."""

    existing: str
    schema_version_table: str
    current_version: str
    waiting_by_type: str
    ids_starting_with: str
    record_version: str
    inserts: BatchInserts
    saved_by_token: str
    insert_as_is: str
    update: str
    get: str
    get_next_pending: str
    get_by_status: dict[str, str]
    mark_running: str
    delete: str
    stats: str
    stats_types: str
    claim: str
    claim_types: str
    claim_durable: str
    claim_types_durable: str
    settle: str
    claimed_by_token: str
    settled_by_token: str
    metadata_for_update: str
    progress: str
    heartbeat: str
    rescue: str
    rescue_orphans: str
    register_worker: str
    unregister_worker: str
    workers: str
    request_cancel: str
    list_jobs: dict[tuple[str | None, bool], str]
    count_unfinished: str
    count_unfinished_types: str
    requeue: str
    unique_holder: str
    purge: str
    notify: str
    notify_many: str
    listen: tuple[str, ...]
    listen_changed: str
    _claims: dict[tuple[int, bool, bool], str] = attrs.field(
        factory=dict, init=False, repr=False, eq=False
    )

    def claim_for(self, limit: int, *, typed: bool, durable: bool) -> str:
        """The claim statement for ``limit`` jobs (see :data:`LITERAL_LIMIT_MAX`).

        ``typed``: the claim takes only the job types in its ``types`` parameter;
        ``durable``: it shares its transaction with settles (see ``claims`` in
        :func:`build_statements`). The statement still accepts the ``limit``
        parameter, which it ignores when the limit is written into it.
        """
        if typed:
            template = self.claim_types_durable if durable else self.claim_types
        else:
            template = self.claim_durable if durable else self.claim
        if not 0 < limit <= LITERAL_LIMIT_MAX:
            return template
        key = (limit, typed, durable)
        statement = self._claims.get(key)
        if statement is None:
            statement = self._claims[key] = template.replace("%(limit)s", str(int(limit)))
        return statement


def build_statements(schema: str, channels: tuple[str, str, str]) -> Statements:
    """Build the statements for ``schema`` (validated by the caller) and its channels."""
    s = f'"{schema}"'
    jobs = f"{s}.jobs"
    workers = f"{s}.workers"
    ready = f"{_READY} AND ready_at <= now()"
    returning = ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))
    # The claim, in one statement. ``due``: delayed jobs whose time came (an index
    # range that is empty on most claims), promoted here: those the claim does not
    # take lose their ``delayed`` flag, joining the claim's index. ``ready``: the
    # best ready jobs, walking that index in claim order; it holds no delayed job,
    # so jobs delayed by an hour are never walked past. The claim takes the best
    # ``limit`` of both, by priority, then ready_at, then insertion order.
    claim = f"""
        WITH {{async_commit}}
        due AS MATERIALIZED (
            SELECT id, type, priority, ready_at, seq FROM {jobs}
            WHERE delayed AND {_READY} AND ready_at <= now()
            ORDER BY ready_at
            LIMIT {PROMOTE_MAX}
            FOR UPDATE SKIP LOCKED
        ),
        ready AS MATERIALIZED (
            SELECT id, type, priority, ready_at, seq FROM {jobs}
            WHERE {ready} AND NOT delayed {{types}}
            ORDER BY {_CLAIM_ORDER}
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ),
        picked AS MATERIALIZED (
            SELECT id FROM (
                SELECT id, type, priority, ready_at, seq FROM due WHERE true {{types}}
                UNION ALL
                SELECT id, type, priority, ready_at, seq FROM ready
            ) AS candidates
            -- Types with flow settings go through the limited claim (see ._flow),
            -- never here: read in the statement itself, so a limit set a moment ago
            -- is obeyed. (Filtered after the index walk, which it would slow down.)
            WHERE type <> ALL (ARRAY(SELECT job_type FROM {s}.flow_limits))
            ORDER BY {_CLAIM_ORDER}
            LIMIT %(limit)s
        ),
        promoted AS (
            UPDATE {jobs} AS j SET delayed = false
            FROM due WHERE j.id = due.id AND due.id NOT IN (SELECT id FROM picked)
        )
        UPDATE {jobs} AS j SET
            status = 'running',
            attempts = j.attempts + 1,
            started_at = now(),
            worker_id = %(worker_id)s,
            lease_expires_at = now() + %(lease)s * interval '1 second',
            cancel_requested = false,
            delayed = false,
            op_token = %(token)s
        FROM picked {{join_async}} WHERE j.id = picked.id
        RETURNING {returning}
    """

    def claims(types: str) -> tuple[str, str]:
        # Alone, a claim commits without waiting for the disk; sharing a transaction
        # with settles, it must not: that would make their commit asynchronous too.
        alone = claim.format(
            types=types, async_commit=f"{_ASYNC_COMMIT},", join_async=", async_commit"
        )
        return alone, claim.format(types=types, async_commit="", join_async="")

    stats = f"""
        SELECT status, count(*), avg(execution_time) FILTER (WHERE status = 'completed')
        FROM {jobs} {{where}} GROUP BY status
    """
    # Two counts, each along an index: the status indexes hold no running job.
    count_unfinished = f"""
        SELECT (SELECT count(*) FROM {jobs} WHERE status IN ('pending', 'retrying') {{types}})
             + (SELECT count(*) FROM {jobs} WHERE status = 'running' {{types}})
    """
    insert_template = f"""
        INSERT INTO {jobs} (id, type, payload, status, priority, attempts, max_attempts,
            created_at, started_at, completed_at, run_at, ready_at, timeout, last_error, result,
            execution_time, progress, progress_message, metadata, tenant_id, retry, delayed)
        VALUES (%(id)s, %(type)s, %(payload)s, %(status)s, %(priority)s, %(attempts)s,
            %(max_attempts)s, %(created_at)s, %(started_at)s, %(completed_at)s,
            {{run_at}}, {{ready_at}},
            %(timeout)s, %(last_error)s, %(result)s, %(execution_time)s, %(progress)s,
            %(progress_message)s, %(metadata)s, %(tenant_id)s, %(retry)s, {{delayed}})
    """
    # update() of an unknown id: the record as given, claimable from its run_at.
    insert_as_is = insert_template.format(
        run_at="%(run_at)s",
        ready_at="coalesce(%(run_at)s::timestamptz, now())",
        delayed=f"%(status)s IN ('pending', 'retrying') AND {_LATER}",
    )
    return Statements(
        schema_version_table=f"""
            CREATE TABLE IF NOT EXISTS {s}.schema_version (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
        """,
        existing="""
            SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s),
                   to_regclass(format('%%I.schema_version', %(schema)s)) IS NOT NULL
        """,
        current_version=f"SELECT coalesce(max(version), 0) FROM {s}.schema_version",
        waiting_by_type=f"""
            SELECT type, count(*) FROM {jobs} WHERE status IN ('pending', 'retrying')
            GROUP BY type
        """,
        ids_starting_with=f"""
            SELECT id FROM {jobs} WHERE starts_with(id, %(prefix)s) ORDER BY id LIMIT %(limit)s
        """,
        record_version=f"INSERT INTO {s}.schema_version (version) VALUES (%s)",
        inserts=BatchInserts(jobs),
        saved_by_token=f"SELECT id FROM {jobs} WHERE id = ANY(%s) AND op_token = %s",
        insert_as_is=insert_as_is,
        update=f"""
            UPDATE {jobs} SET
                type = %(type)s, payload = %(payload)s, status = %(status)s,
                priority = %(priority)s, attempts = %(attempts)s,
                max_attempts = %(max_attempts)s, created_at = %(created_at)s,
                started_at = %(started_at)s, completed_at = %(completed_at)s,
                run_at = %(run_at)s, ready_at = coalesce(%(run_at)s, ready_at),
                timeout = %(timeout)s, last_error = %(last_error)s, result = %(result)s,
                execution_time = %(execution_time)s, progress = %(progress)s,
                progress_message = %(progress_message)s, metadata = %(metadata)s,
                tenant_id = %(tenant_id)s, retry = %(retry)s,
                worker_id = CASE WHEN %(status)s = 'running' THEN worker_id END,
                lease_expires_at = CASE WHEN %(status)s = 'running' THEN lease_expires_at END,
                cancel_requested = CASE WHEN %(status)s = 'running' THEN cancel_requested
                                        ELSE false END,
                delayed = %(status)s IN ('pending', 'retrying')
                          AND coalesce(%(run_at)s::timestamptz, ready_at) > now()
            WHERE id = %(id)s
            RETURNING status
        """,
        get=f"SELECT {JOB_COLUMNS} FROM {jobs} WHERE id = %s",
        get_next_pending=f"""
            SELECT {JOB_COLUMNS} FROM {jobs} WHERE {ready}
            ORDER BY {_CLAIM_ORDER} LIMIT %s
        """,
        get_by_status={
            status: of_status(jobs, status, "true", "%(limit)s", order="seq") for status in STATUSES
        },
        mark_running=f"""
            UPDATE {jobs} SET status = 'running', attempts = attempts + 1, started_at = now(),
                delayed = false
            WHERE id = %s AND status = 'pending'
            RETURNING id
        """,
        delete=f"DELETE FROM {jobs} WHERE id = %s RETURNING id",
        stats=stats.format(where=""),
        stats_types=stats.format(where="WHERE type = ANY(%s)"),
        claim=claims("")[0],
        claim_types=claims("AND type = ANY(%(types)s)")[0],
        claim_durable=claims("")[1],
        claim_types_durable=claims("AND type = ANY(%(types)s)")[1],
        # Many workers' settles in one statement, passed as one JSON array (much
        # cheaper for the client to encode than an array per column). Each row is
        # fenced on its own (id, running, attempt, worker); ``idx`` tells the
        # caller which applied. ``ids`` repeats the batch's ids as an array so
        # that the fence finds its rows by primary key, whatever the plan: joined
        # to the JSON alone, it read every running row, the jobs of all workers.
        # The two statements that lock several rows and may wait for them, this
        # one and the heartbeat, lock in id order: in any other order a heartbeat
        # and a settle of the same jobs can deadlock.
        # No NOTIFY here: PostgreSQL holds a database-wide lock from a notifying
        # transaction's commit until its WAL is flushed, which would serialise
        # every worker's settles; the store notifies in a separate, WAL-free one.
        settle=f"""
            WITH v AS (
                SELECT * FROM ROWS FROM (json_to_recordset(%(batch)s::json) AS (
                    id text, worker_id text, attempt integer, status text, result text,
                    error text, delay double precision, execution_time double precision
                )) WITH ORDINALITY AS v(id, worker_id, attempt, status, result, error, delay,
                                        execution_time, idx)
            ),
            held AS MATERIALIZED (
                SELECT j.id FROM {jobs} AS j JOIN v ON j.id = v.id
                WHERE j.id = ANY(%(ids)s::text[]) AND j.status = 'running'
                    AND j.attempts = v.attempt AND j.worker_id = v.worker_id
                ORDER BY j.id
                FOR UPDATE OF j
            )
            UPDATE {jobs} AS j SET
                status = CASE WHEN v.status IN ('retrying', 'pending') AND j.cancel_requested
                              THEN 'cancelled' ELSE v.status END,
                attempts = CASE WHEN v.status = 'pending' AND NOT j.cancel_requested
                                THEN j.attempts - 1 ELSE j.attempts END,
                result = CASE WHEN v.status = 'completed' THEN v.result ELSE j.result END,
                last_error = coalesce(v.error, j.last_error),
                execution_time = coalesce(v.execution_time, j.execution_time),
                progress = CASE WHEN v.status IN ('retrying', 'pending')
                                AND NOT j.cancel_requested THEN NULL ELSE j.progress END,
                progress_message = CASE WHEN v.status IN ('retrying', 'pending')
                                        AND NOT j.cancel_requested
                                        THEN NULL ELSE j.progress_message END,
                completed_at = CASE WHEN v.status IN {_FINAL} OR j.cancel_requested
                                    THEN now() ELSE j.completed_at END,
                run_at = CASE WHEN v.status = 'retrying' AND NOT j.cancel_requested
                              THEN now() + v.delay * interval '1 second' ELSE j.run_at END,
                ready_at = CASE WHEN v.status = 'retrying' AND NOT j.cancel_requested
                                THEN now() + v.delay * interval '1 second' ELSE j.ready_at END,
                delayed = v.status = 'retrying' AND NOT j.cancel_requested AND v.delay > 0,
                worker_id = NULL,
                lease_expires_at = NULL,
                op_token = %(token)s
            FROM v, held
            -- ``held`` locked and fenced these rows (status included); repeating
            -- ``status = 'running'`` here led the planner into a nested loop over
            -- the status index that grew with the number of running jobs.
            WHERE j.id = held.id AND j.id = v.id
                AND j.attempts = v.attempt AND j.worker_id = v.worker_id
            RETURNING v.idx, j.status
        """,
        claimed_by_token=f"""
            SELECT {JOB_COLUMNS} FROM {jobs}
            WHERE status = 'running' AND worker_id = %(worker_id)s AND op_token = %(token)s
        """,
        settled_by_token=f"SELECT id FROM {jobs} WHERE id = ANY(%s) AND op_token = %s",
        metadata_for_update=f"""
            SELECT metadata FROM {jobs}
            WHERE id = %(id)s AND status = 'running' AND attempts = %(attempt)s
                AND worker_id = %(worker_id)s
            FOR UPDATE
        """,
        progress=f"""
            UPDATE {jobs} SET
                progress = coalesce(%(progress)s, progress),
                progress_message = CASE
                    WHEN %(progress)s::double precision IS NULL AND %(message)s::text IS NULL
                    THEN progress_message ELSE %(message)s END,
                metadata = coalesce(%(metadata)s, metadata)
            WHERE id = %(id)s AND status = 'running' AND attempts = %(attempt)s
                AND worker_id = %(worker_id)s
            RETURNING id
        """,
        # A worker with a row in ``workers`` renews that row, not its jobs: it reads
        # the jobs it names by primary key (for cancel requests and lost claims),
        # and finds, through the index of running jobs by worker, those it holds
        # without naming them whose claim's lease ran out (a claim whose answer was
        # lost, a settle given up on): the store rescues them (``rescue_orphans``).
        # A worker without a row renews the leases of the jobs it names, as before,
        # locking them in id order (see ``settle``).
        heartbeat=f"""
            WITH {_ASYNC_COMMIT},
            me AS (
                UPDATE {workers} AS w SET
                    last_seen = now(),
                    running = %(running)s,
                    expires_at = now() + %(lease)s * interval '1 second'
                FROM async_commit
                WHERE w.worker_id = %(worker_id)s
                RETURNING w.worker_id
            ),
            mine AS MATERIALIZED (
                SELECT id FROM {jobs}
                WHERE id = ANY(%(ids)s::text[]) AND status = 'running'
                    AND worker_id = %(worker_id)s AND NOT EXISTS (SELECT FROM me)
                ORDER BY id
                FOR UPDATE
            ),
            renewed AS (
                UPDATE {jobs} AS j SET lease_expires_at = now() + %(lease)s * interval '1 second'
                FROM mine WHERE j.id = mine.id
                RETURNING j.id, j.cancel_requested
            )
            SELECT id, cancel_requested, false FROM renewed
            UNION ALL
            SELECT id, cancel_requested, false FROM {jobs}
            WHERE id = ANY(%(ids)s::text[]) AND status = 'running'
                AND worker_id = %(worker_id)s AND EXISTS (SELECT FROM me)
            UNION ALL
            SELECT id, false, true FROM {jobs}
            WHERE worker_id = %(worker_id)s AND status = 'running'
                AND lease_expires_at < now() AND NOT (id = ANY(%(ids)s::text[]))
                AND EXISTS (SELECT FROM me)
            UNION ALL
            -- One row without an id when the worker has no row (never had one, or
            -- a rescuer dropped it while the worker stalled).
            SELECT NULL, false, false WHERE NOT EXISTS (SELECT FROM me)
        """,
        # SKIP LOCKED: several workers may rescue at once; each expired row is
        # rescued by exactly one of them, and a row a heartbeat is renewing right
        # now is re-checked against its new lease. Two kinds of jobs are rescued,
        # each found through the index of running jobs by worker, so the cost
        # depends on them and on the number of workers, never on how many jobs
        # live workers run:
        # - all running jobs of the workers whose row expired (``stale``), whose
        #   rows go too; a job skipped because it was locked has a worker without
        #   a row from then on, and is rescued as one of those;
        # - the jobs whose lease expired among those held by workers without a row
        #   (``holders``: the distinct worker ids of running jobs, one index probe
        #   each, without a row, live or not).
        rescue=_rescue(
            jobs,
            returning,
            f"""
            stale AS MATERIALIZED (
                SELECT worker_id FROM {workers} WHERE expires_at < now()
                FOR UPDATE SKIP LOCKED
            ),
            holders (worker_id) AS (
                (SELECT worker_id FROM {jobs} WHERE status = 'running' AND worker_id IS NOT NULL
                 ORDER BY worker_id LIMIT 1)
                UNION ALL
                SELECT (SELECT j.worker_id FROM {jobs} AS j
                        WHERE j.status = 'running' AND j.worker_id > h.worker_id
                        ORDER BY j.worker_id LIMIT 1)
                FROM holders AS h WHERE h.worker_id IS NOT NULL
            ),
            expired AS MATERIALIZED (
                SELECT x.id, x.worker_id FROM stale AS s, LATERAL (
                    SELECT j.id, j.worker_id FROM {jobs} AS j
                    WHERE j.worker_id = s.worker_id AND j.status = 'running'
                    FOR UPDATE SKIP LOCKED
                ) AS x
                UNION ALL
                SELECT x.id, x.worker_id FROM holders AS h, LATERAL (
                    SELECT j.id, j.worker_id FROM {jobs} AS j
                    WHERE j.worker_id = h.worker_id AND j.status = 'running'
                        AND j.lease_expires_at < now()
                    FOR UPDATE SKIP LOCKED
                ) AS x
                WHERE h.worker_id IS NOT NULL
                    AND NOT EXISTS (SELECT FROM {workers} AS w WHERE w.worker_id = h.worker_id)
            ),
            gone AS (
                DELETE FROM {workers} AS w USING stale WHERE w.worker_id = stale.worker_id
            )""",
            "lease expired",
        ),
        # The jobs a registered worker holds without naming them in its heartbeat,
        # their claim's lease run out: rescued like a lost worker's.
        rescue_orphans=_rescue(
            jobs,
            returning,
            f"""
            expired AS MATERIALIZED (
                SELECT id, worker_id FROM {jobs}
                WHERE id = ANY(%(orphans)s::text[]) AND worker_id = %(worker_id)s
                    AND status = 'running' AND lease_expires_at < now()
                FOR UPDATE SKIP LOCKED
            )""",
            "its worker no longer held the claim",
        ),
        register_worker=f"""
            INSERT INTO {workers} AS w (worker_id, hostname, pid, started_at, last_seen,
                concurrency, running, job_types, expires_at)
            VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(started_at)s, now(),
                %(concurrency)s, %(running)s, %(job_types)s::text[],
                now() + %(lease)s * interval '1 second')
            ON CONFLICT (worker_id) DO UPDATE SET
                hostname = excluded.hostname, pid = excluded.pid,
                started_at = excluded.started_at, last_seen = excluded.last_seen,
                concurrency = excluded.concurrency, running = excluded.running,
                job_types = excluded.job_types, expires_at = excluded.expires_at
        """,
        unregister_worker=f"DELETE FROM {workers} WHERE worker_id = %s",
        workers=f"""
            SELECT worker_id, hostname, pid, started_at, last_seen, concurrency, running,
                job_types
            FROM {workers} WHERE expires_at >= now()
            ORDER BY started_at, worker_id
        """,
        request_cancel=f"""
            WITH old AS (
                SELECT id, status FROM {jobs} WHERE id = %(id)s FOR UPDATE
            ),
            upd AS (
                UPDATE {jobs} AS j SET
                    status = CASE WHEN old.status = 'running' THEN j.status ELSE 'cancelled' END,
                    completed_at = CASE WHEN old.status = 'running' THEN j.completed_at
                                        ELSE now() END,
                    cancel_requested = true,
                    delayed = false
                FROM old
                WHERE j.id = old.id AND old.status IN ('pending', 'retrying', 'running')
                RETURNING old.status AS old_status
            ),
            notes AS (
                SELECT pg_notify(CASE WHEN old_status = 'running' THEN %(cancel_channel)s
                                      ELSE %(changed_channel)s END, %(payload)s)
                FROM upd
            )
            SELECT old_status FROM upd WHERE (SELECT count(*) FROM notes) >= 0
        """,
        # Keyed by (status or None, type given): each walks its own index.
        list_jobs={
            (status, typed): _listing(jobs, status, typed)
            for status in (None, *STATUSES)
            for typed in (False, True)
        },
        count_unfinished=count_unfinished.format(types=""),
        count_unfinished_types=count_unfinished.format(types="AND type = ANY(%(types)s)"),
        requeue=f"""
            UPDATE {jobs} SET
                status = 'pending', attempts = 0, started_at = NULL, completed_at = NULL,
                run_at = NULL, ready_at = now(), result = NULL, progress = NULL,
                progress_message = NULL, worker_id = NULL, lease_expires_at = NULL,
                cancel_requested = false, delayed = false
            WHERE id = %s AND status IN ('failed', 'timeout', 'cancelled')
            RETURNING id
        """,
        unique_holder=f"""
            SELECT j.unique_key, o.id FROM {jobs} j
            LEFT JOIN {jobs} o ON o.unique_key = j.unique_key AND o.id <> j.id
                AND o.status IN ('pending', 'running', 'retrying')
            WHERE j.id = %s
        """,
        purge=f"""
            DELETE FROM {jobs}
            WHERE status IN {_FINAL}
                AND completed_at < now() - %s * interval '1 second'
                AND (%s::text[] IS NULL OR status = ANY(%s::text[]))
        """,
        notify="SELECT pg_notify(%s, %s)",
        # The notifications for a batch of saves or settles, as one JSON array of
        # [channel, payload] pairs, sent after the batch's commit in a transaction
        # of their own (in the same round trip). PostgreSQL holds a database-wide
        # lock from a notifying transaction's commit until it ends: in the batch's
        # own transaction that lock would be held through its WAL flush and
        # serialise every worker's writes. This commit does not wait for the disk:
        # a lost notification costs only latency.
        notify_many=f"""
            WITH {_ASYNC_COMMIT}
            SELECT pg_notify(n->>0, n->>1)
            FROM json_array_elements(%s::json) AS n, async_commit
        """,
        # The changed channel is heard only once someone in the process waits for
        # a job (most workers never do, and every settle is announced on it).
        listen=tuple(f'LISTEN "{channel}"' for channel in channels[:2]),
        listen_changed=f'LISTEN "{channels[2]}"',
    )
