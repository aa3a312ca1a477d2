"""Rows of :class:`PostgresStorage`'s table <-> :class:`Job` records, and NOTIFY payloads.

The statements live in :mod:`._sql`; these functions make their
parameters and read their results. JSON columns are ``text`` (see there why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from ..._records import Job, JobStatus, WorkerInfo
from .._codec import (
    BatchCodec,
    decode_error,
    decode_json,
    decode_retry,
    encode_error,
    encode_json,
    encode_retry,
)
from ._sql import BATCH_COLUMNS

#: NOTIFY payloads stay below this many bytes (PostgreSQL refuses 8000).
MAX_PAYLOAD: Final = 7000
_MAX_ID_IN_PAYLOAD: Final = 500
#: Number of columns in ``JOB_COLUMNS`` (see :mod:`._sql`) that belong to the
#: :class:`Job`; a claim's rows carry two more, which it sorts by.
JOB_FIELD_COUNT: Final = 21


def row_to_job(row: tuple[Any, ...]) -> Job[Any]:
    """Make the :class:`Job` snapshot of a row selected as :data:`JOB_COLUMNS`."""
    (
        job_id, job_type, payload, status, priority, attempts, max_attempts, created_at,
        started_at, completed_at, run_at, timeout, last_error, result, execution_time,
        progress, progress_message, metadata, tenant_id, retry, unique_key,
    ) = row[: JOB_FIELD_COUNT]  # fmt: skip
    return Job(
        id=job_id,
        type=job_type,
        payload=decode_json(payload),
        status=status,
        priority=priority,
        attempts=attempts,
        max_attempts=max_attempts,
        created_at=created_at if created_at.tzinfo is UTC else created_at.astimezone(UTC),
        started_at=_utc(started_at),
        completed_at=_utc(completed_at),
        run_at=_utc(run_at),
        timeout=timeout,
        last_error=decode_error(last_error),
        result=decode_json(result),
        execution_time=execution_time,
        progress=progress,
        progress_message=progress_message,
        metadata=decode_json(metadata),
        tenant_id=tenant_id,
        retry=decode_retry(retry),
        unique_key=unique_key,
    )


def job_record(job: Job[Any], codec: BatchCodec | None = None) -> dict[str, Any]:
    """Encode ``job`` for a row: every field that can fail is encoded before any I/O.

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
    return {
        "id": job.id,
        "type": job.type,
        "payload": payload,
        "status": JobStatus(job.status).value,
        "priority": int(job.priority),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "run_at": job.run_at,
        "timeout": job.timeout,
        "last_error": encode_error(job.last_error),
        "result": result,
        "execution_time": job.execution_time,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "metadata": metadata,
        "tenant_id": job.tenant_id,
        "retry": retry,
        "unique_key": job.unique_key,
    }


def row_to_worker(row: tuple[Any, ...]) -> WorkerInfo:
    """Make the :class:`WorkerInfo` of a row of the workers table (``workers`` in ``_sql``)."""
    worker_id, hostname, pid, started_at, last_seen, concurrency, running, job_types = row
    return WorkerInfo(
        worker_id=worker_id,
        hostname=hostname,
        pid=pid,
        started_at=started_at.astimezone(UTC),
        last_seen=last_seen.astimezone(UTC),
        concurrency=concurrency,
        running=running,
        job_types=frozenset(job_types),
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


#: What a batch insert sends: the columns that are arrays, and every parameter.
Columns = tuple[frozenset[str], dict[str, Any]]

#: The job fields a batch reads column by column, with what encodes each value
#: (None: as it is; a float column is made all float for psycopg's array dumper).
_FIELDS: Final[tuple[tuple[str, Callable[[Any], Any] | None], ...]] = (
    ("type", None),
    ("status", lambda status: JobStatus(status).value),
    ("priority", int),
    ("attempts", None),
    ("max_attempts", None),
    ("created_at", None),
    ("started_at", None),
    ("completed_at", None),
    ("run_at", None),
    ("timeout", lambda value: None if value is None else float(value)),
    ("last_error", encode_error),
    ("result", lambda value: None if value is None else encode_json(value, "result")),
    ("execution_time", lambda value: None if value is None else float(value)),
    ("progress", lambda value: None if value is None else float(value)),
    ("progress_message", None),
    ("tenant_id", None),
    ("unique_key", None),
)


def job_columns(jobs: Sequence[Job[Any]], codec: BatchCodec, delay: float) -> Columns:
    """Encode ``jobs`` (at least one) column by column for :class:`~._sql.BatchInserts`.

    A column whose values are all equal is encoded once (in a ``submit_many``,
    every column but the ids and payloads).

    Raises:
        TypeError: a payload, result or metadata is not JSON-encodable.
    """
    arrays = {"id", "payload"}
    params: dict[str, Any] = {
        "id": [job.id for job in jobs],
        "payload": [encode_json(job.payload, "payload") for job in jobs],
        "delay": float(delay),
    }
    for name, encode in _FIELDS:
        values = [getattr(job, name) for job in jobs]
        if _same(values):
            params[name] = values[0] if encode is None else encode(values[0])
        else:
            arrays.add(name)
            params[name] = values if encode is None else [encode(value) for value in values]
    for name, encode_shared in (("metadata", codec.metadata), ("retry", codec.retry)):
        values = [getattr(job, name) for job in jobs]
        if _same(values):
            params[name] = encode_shared(values[0])
        else:
            arrays.add(name)
            params[name] = [encode_shared(value) for value in values]
    return frozenset(arrays), params


def record_columns(records: Sequence[Mapping[str, Any]]) -> Columns:
    """Turn records of :func:`job_record` (with a ``delay``) into columns, likewise."""
    arrays = {"id"}
    params: dict[str, Any] = {"id": [record["id"] for record in records]}
    for name, kind in BATCH_COLUMNS[1:]:
        values = [record[name] for record in records]
        if kind == "double precision":
            values = [None if value is None else float(value) for value in values]
        if _same(values):
            params[name] = values[0]
        else:
            arrays.add(name)
            params[name] = values
    return frozenset(arrays), params


def _same(values: list[Any]) -> bool:
    # (list.count compares by identity first: a batch's shared objects cost nothing.)
    return values.count(values[0]) == len(values)


def id_payloads(job_ids: Iterable[str]) -> list[str]:
    """Pack job ids into NOTIFY payloads, one per line, far below the 8000-byte limit.

    An id that contains a newline or is very long is announced as ``*``: the
    listener then wakes every waiter.
    """
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for job_id in job_ids:
        length = len(job_id.encode())
        if "\n" in job_id or length > _MAX_ID_IN_PAYLOAD or job_id == "*":
            job_id, length = "*", 1
        if size + length > MAX_PAYLOAD and chunk:
            payloads.append("\n".join(chunk))
            chunk, size = [], 0
        chunk.append(job_id)
        size += length + 1
    if chunk:
        payloads.append("\n".join(chunk))
    return payloads
