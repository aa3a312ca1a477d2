"""Turning ``submit(...)`` arguments into a job record, validated before anything is stored."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs
import trio

from ._records import Job, JobPriority, new_job, replace, utcnow
from ._retry import RetryConfig
from ._tracing import on_submit
from .storage._base import BatchStorage, JobStorage

_RETRY_FIELDS = frozenset(a.name for a in attrs.fields(RetryConfig))


def check_seconds(
    name: str, value: object, *, allow_none: bool = False, allow_inf: bool = True
) -> None:
    """Raise unless ``value`` is a non-negative number of seconds (naming ``name``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")


def resolve_retry(
    retry: RetryConfig | Mapping[str, Any] | None, default: RetryConfig
) -> RetryConfig:
    """Return the job's retry policy: ``retry`` itself, or its overrides on ``default``."""
    if retry is None:
        return default
    if isinstance(retry, RetryConfig):
        return retry
    if not isinstance(retry, Mapping):
        raise TypeError(f"retry must be a RetryConfig or a mapping of its fields, got {retry!r}")
    unknown = set(retry) - _RETRY_FIELDS
    if unknown:
        raise TypeError(f"retry has unknown RetryConfig fields: {sorted(unknown)}")
    return attrs.evolve(default, **retry)


def resolve_delay(delay: float, run_at: datetime | None) -> float:
    """Return the delay in seconds that ``delay`` or ``run_at`` (exclusive) ask for.

    ``run_at`` must be a timezone-aware :class:`~datetime.datetime`; a time in
    the past means at once.

    Raises:
        TypeError, ValueError: ``run_at`` is not an aware datetime, or both are given.
    """
    if run_at is None:
        return delay
    if not isinstance(run_at, datetime):
        raise TypeError(f"run_at must be a timezone-aware datetime, got {run_at!r}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise ValueError(f"run_at must be timezone-aware, got the naive {run_at!r}")
    if delay != 0.0:
        raise ValueError("give either delay or run_at, not both")
    return max(0.0, (run_at - utcnow()).total_seconds())


def build_job(
    job_type: str,
    payload: Any,
    *,
    priority: int,
    retry: RetryConfig | Mapping[str, Any] | None,
    timeout: float | None,
    delay: float,
    metadata: Mapping[str, Any] | None,
    tenant_id: str | None,
    default_retry: RetryConfig,
    default_timeout: float | None,
    unique_key: str | None = None,
) -> Job[Any]:
    """Validate ``submit``'s arguments and build the new job's record.

    ``timeout=None`` takes ``default_timeout``; ``math.inf`` means no timeout and
    is stored as ``None``. ``delay`` is the one :func:`resolve_delay` returned.

    Raises:
        TypeError, ValueError: an argument is invalid; the message names it.
    """
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
        raise TypeError(f"unique_key must be a non-empty str or None, got {unique_key!r}")
    if not isinstance(job_type, str) or not job_type:
        raise TypeError(f"job_type must be a non-empty str, got {job_type!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be a JobPriority, got {priority!r}")
    if not 0 <= priority <= 3:
        raise ValueError(f"priority must be a JobPriority (0..3), got {priority!r}")
    if delay != 0.0 or type(delay) is not float:  # (the default needs no check)
        check_seconds("delay", delay, allow_inf=False)
    if timeout is not None:
        check_seconds("timeout", timeout)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {metadata!r}")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise TypeError(f"tenant_id must be a str or None, got {tenant_id!r}")
    config = resolve_retry(retry, default_retry)
    if timeout is None:
        timeout = default_timeout
    if timeout is not None and math.isinf(timeout):
        timeout = None
    now = utcnow()
    job: Job[Any] = new_job(
        os.urandom(16).hex(),
        job_type,
        payload,
        priority if type(priority) is JobPriority else JobPriority(priority),
        config.max_attempts,
        now,
        now + timedelta(seconds=delay) if delay else None,
        timeout,
        dict(metadata) if metadata else {},
        tenant_id,
        config,
    )
    if unique_key is not None:
        job = replace(job, unique_key=unique_key)
    on_submit(job)  # OpenTelemetry, when installed: the trace context rides in metadata
    return job


def build_jobs(template: Job[Any], payloads: Iterable[Any]) -> list[Job[Any]]:
    """Return one job per payload: copies of ``template`` (validated) with new ids."""
    items = list(payloads)
    # One read of the random source for the whole batch (16 bytes per id).
    ids = os.urandom(16 * len(items)).hex()
    return [
        replace(template, id=ids[32 * i : 32 * i + 32], payload=payload)
        for i, payload in enumerate(items)
    ]


async def store_jobs(storage: JobStorage, jobs: list[Job[Any]], delay: float) -> list[str]:
    """Save ``jobs`` in one transaction; for each, the id of the job holding it.

    Raises:
        NotImplementedError: the store has no ``save_many`` (a custom store
            without :class:`~trio_jobs.storage.BatchStorage`).
    """
    if not isinstance(storage, BatchStorage):
        raise NotImplementedError(
            f"{type(storage).__name__} cannot save jobs in batches or by unique key"
            " (it does not implement save_many)"
        )
    return await storage.save_many(jobs, delay=delay)


async def save_batch(
    storage: JobStorage,
    job_type: str,
    payloads: Iterable[Any],
    *,
    priority: JobPriority | int,
    retry: RetryConfig | Mapping[str, Any] | None,
    timeout: float | None,
    delay: float,
    metadata: Mapping[str, Any] | None,
    tenant_id: str | None,
    run_at: datetime | None,
    unique_key: str | None,
    default_retry: RetryConfig,
    default_timeout: float | None,
) -> list[tuple[Job[Any], str]]:
    """``submit_many``: validate everything, then store one job per payload, all or none.

    Returns:
        Each job built, with the id of the job holding it (its own, or that of the
        active job with its ``unique_key``).
    """
    items = list(payloads)
    delay = resolve_delay(delay, run_at)
    template = build_job(
        job_type,
        None,
        priority=priority,
        retry=retry,
        timeout=timeout,
        delay=delay,
        metadata=metadata,
        tenant_id=tenant_id,
        default_retry=default_retry,
        default_timeout=default_timeout,
        unique_key=unique_key,
    )
    jobs = build_jobs(template, items)
    if not jobs:
        await trio.lowlevel.checkpoint()
        return []
    holders = await store_jobs(storage, jobs, delay)
    return list(zip(jobs, holders, strict=True))
