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
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

#: Columns that make a :class:`Job`, in the order ``row_to_job`` reads them,
#: followed by the two columns a claim sorts by.
JOB_COLUMNS: Final = (
    "id, type, payload, status, priority, attempts, max_attempts, created_at, started_at,"
    " completed_at, run_at, timeout, last_error, result, execution_time, progress,"
    " progress_message, metadata, tenant_id, retry, ready_at, seq"
)

_READY = "status IN ('pending', 'retrying')"
_FINAL = "('completed', 'failed', 'cancelled', 'timeout')"
_CLAIM_ORDER = "priority DESC, ready_at, seq"


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


#: ``(version, builder)`` pairs, in order. Append only; never edit a released step.
MIGRATIONS: Final = ((1, _migration_1),)
LATEST_VERSION: Final = MIGRATIONS[-1][0]


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


@attrs.frozen
class Statements:
    """Every statement the store runs, built for one schema."""

    existing: str
    schema_version_table: str
    current_version: str
    record_version: str
    insert_many: str
    saved_by_token: str
    insert_as_is: str
    update: str
    get: str
    get_next_pending: str
    get_by_status: str
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
    request_cancel: str
    list_jobs: str
    count_unfinished: str
    count_unfinished_types: str
    requeue: str
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
    ready = f"{_READY} AND ready_at <= now()"
    returning = ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))
    claim = f"""
        WITH {{async_commit}}
        picked AS MATERIALIZED (
            SELECT id FROM {jobs}
            WHERE {ready} {{types}}
            ORDER BY {_CLAIM_ORDER}
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE {jobs} AS j SET
            status = 'running',
            attempts = j.attempts + 1,
            started_at = now(),
            worker_id = %(worker_id)s,
            lease_expires_at = now() + %(lease)s * interval '1 second',
            cancel_requested = false,
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
    count_unfinished = (
        f"SELECT count(*) FROM {jobs} WHERE status IN ('pending', 'retrying', 'running') {{types}}"
    )
    insert_template = f"""
        INSERT INTO {jobs} (id, type, payload, status, priority, attempts, max_attempts,
            created_at, started_at, completed_at, run_at, ready_at, timeout, last_error, result,
            execution_time, progress, progress_message, metadata, tenant_id, retry)
        VALUES (%(id)s, %(type)s, %(payload)s, %(status)s, %(priority)s, %(attempts)s,
            %(max_attempts)s, %(created_at)s, %(started_at)s, %(completed_at)s,
            {{run_at}}, {{ready_at}},
            %(timeout)s, %(last_error)s, %(result)s, %(execution_time)s, %(progress)s,
            %(progress_message)s, %(metadata)s, %(tenant_id)s, %(retry)s)
    """
    # save(): many jobs in one statement, passed as one JSON array. Each is
    # claimable after its ``delay``; its run_at says when, if delayed.
    insert_many = f"""
        INSERT INTO {jobs} (id, type, payload, status, priority, attempts, max_attempts,
            created_at, started_at, completed_at, run_at, ready_at, timeout, last_error, result,
            execution_time, progress, progress_message, metadata, tenant_id, retry, op_token)
        SELECT id, type, payload, status, priority, attempts, max_attempts,
            created_at, started_at, completed_at,
            CASE WHEN delay > 0 THEN now() + delay * interval '1 second' ELSE run_at END,
            now() + delay * interval '1 second',
            timeout, last_error, result, execution_time, progress, progress_message, metadata,
            tenant_id, retry, %(token)s
        FROM ROWS FROM (json_to_recordset(%(batch)s::json) AS (
            id text, type text, payload text, status text, priority smallint, attempts integer,
            max_attempts integer, created_at timestamptz, started_at timestamptz,
            completed_at timestamptz, run_at timestamptz, timeout double precision,
            last_error text, result text, execution_time double precision,
            progress double precision, progress_message text, metadata text, tenant_id text,
            retry text, delay double precision
        )) WITH ORDINALITY AS v
        ORDER BY v.ordinality
        ON CONFLICT (id) DO NOTHING
        RETURNING id
    """
    # update() of an unknown id: the record as given, claimable from its run_at.
    insert_as_is = insert_template.format(
        run_at="%(run_at)s", ready_at="coalesce(%(run_at)s::timestamptz, now())"
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
        record_version=f"INSERT INTO {s}.schema_version (version) VALUES (%s)",
        insert_many=insert_many,
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
                                        ELSE false END
            WHERE id = %(id)s
            RETURNING status
        """,
        get=f"SELECT {JOB_COLUMNS} FROM {jobs} WHERE id = %s",
        get_next_pending=f"""
            SELECT {JOB_COLUMNS} FROM {jobs} WHERE {ready}
            ORDER BY {_CLAIM_ORDER} LIMIT %s
        """,
        get_by_status=f"""
            SELECT {JOB_COLUMNS} FROM {jobs} WHERE status = %s
            ORDER BY seq LIMIT %s
        """,
        mark_running=f"""
            UPDATE {jobs} SET status = 'running', attempts = attempts + 1, started_at = now()
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
                completed_at = CASE WHEN v.status IN {_FINAL} OR j.cancel_requested
                                    THEN now() ELSE j.completed_at END,
                run_at = CASE WHEN v.status = 'retrying' AND NOT j.cancel_requested
                              THEN now() + v.delay * interval '1 second' ELSE j.run_at END,
                ready_at = CASE WHEN v.status = 'retrying' AND NOT j.cancel_requested
                                THEN now() + v.delay * interval '1 second' ELSE j.ready_at END,
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
        heartbeat=f"""
            WITH {_ASYNC_COMMIT},
            mine AS MATERIALIZED (
                SELECT id FROM {jobs}
                WHERE id = ANY(%(ids)s) AND status = 'running' AND worker_id = %(worker_id)s
                ORDER BY id
                FOR UPDATE
            )
            UPDATE {jobs} AS j SET lease_expires_at = now() + %(lease)s * interval '1 second'
            FROM mine, async_commit WHERE j.id = mine.id
            RETURNING j.id, j.cancel_requested
        """,
        # SKIP LOCKED: several workers may rescue at once; each expired row is
        # rescued by exactly one of them, and a row a heartbeat is renewing right
        # now is re-checked against its new lease.
        rescue=f"""
            WITH expired AS MATERIALIZED (
                SELECT id, worker_id FROM {jobs}
                WHERE status = 'running' AND lease_expires_at < now()
                FOR UPDATE SKIP LOCKED
            ),
            upd AS (
                UPDATE {jobs} AS j SET
                    status = CASE WHEN j.cancel_requested THEN 'cancelled'
                                  WHEN j.attempts < j.max_attempts THEN 'pending'
                                  ELSE 'failed' END,
                    last_error = CASE WHEN j.cancel_requested THEN j.last_error ELSE
                        json_build_object(
                            'message', format(
                                'worker %%s was lost (lease expired) during attempt %%s',
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
                    worker_id = NULL,
                    lease_expires_at = NULL
                FROM expired WHERE j.id = expired.id
                RETURNING {returning}
            ),
            notes AS (
                {_notify_changed("upd")}
                UNION ALL
                SELECT pg_notify(%(work_channel)s, '0') FROM upd
                WHERE status = 'pending' HAVING count(*) > 0
            )
            SELECT * FROM upd WHERE (SELECT count(*) FROM notes) >= 0
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
                    cancel_requested = true
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
        list_jobs=f"""
            SELECT {JOB_COLUMNS} FROM {jobs}
            WHERE (%(status)s::text IS NULL OR status = %(status)s)
                AND (%(type)s::text IS NULL OR type = %(type)s)
            ORDER BY seq DESC
            LIMIT %(limit)s
        """,
        count_unfinished=count_unfinished.format(types=""),
        count_unfinished_types=count_unfinished.format(types="AND type = ANY(%s)"),
        requeue=f"""
            UPDATE {jobs} SET
                status = 'pending', attempts = 0, started_at = NULL, completed_at = NULL,
                run_at = NULL, ready_at = now(), result = NULL, progress = NULL,
                progress_message = NULL, worker_id = NULL, lease_expires_at = NULL,
                cancel_requested = false
            WHERE id = %s AND status IN ('failed', 'timeout', 'cancelled')
            RETURNING id
        """,
        purge=f"""
            DELETE FROM {jobs}
            WHERE status IN {_FINAL}
                AND completed_at < now() - %s * interval '1 second'
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
