"""Turning ``submit(...)`` arguments into a job record, validated before anything is stored."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import attrs

from ._records import Job, JobPriority, new_job, utcnow
from ._retry import RetryConfig
from ._tracing import on_submit

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
) -> Job[Any]:
    """Validate ``submit``'s arguments and build the new job's record.

    ``timeout=None`` takes ``default_timeout``; ``math.inf`` means no timeout and
    is stored as ``None``.

    Raises:
        TypeError, ValueError: an argument is invalid; the message names it.
    """
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
    on_submit(job)  # OpenTelemetry, when installed: the trace context rides in metadata
    return job
