"""What the pages show: formatting for the templates, and the optional panels.

The schedules and limits panels, and the pause/resume buttons, appear when the
client has the methods behind them (``schedules``, ``get_limits``, ``pause`` and
``resume``); a store that lacks them simply shows no such panel.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import attrs
import trio

from .._records import Job, JobStatus, utcnow
from ..storage._browse import QueueSummary

#: The order statuses are shown in.
STATUS_ORDER = (
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
    JobStatus.COMPLETED,
    JobStatus.FAILED,
    JobStatus.TIMEOUT,
    JobStatus.CANCELLED,
)
#: Statuses a job can be retried from (``requeue``).
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED})


def duration(seconds: float | None) -> str:
    """``seconds`` in sensible units: ``850 ms``, ``12.3 s``, ``4m 2s``, ``3h 5m``, ``2d 4h``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was, as :func:`duration` says it."""
    if when is None:
        return "—"
    return duration(max(0.0, ((now or utcnow()) - when).total_seconds()))


def timestamp(when: datetime | None) -> str:
    """``when`` as ``2026-01-31 12:00:05 UTC``."""
    return "—" if when is None else f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _plain(value: Any) -> Any:
    """What JSON cannot say, said plainly: records as objects, enums by value."""
    if attrs.has(type(value)):
        return {
            field.name: getattr(value, field.name)
            for field in attrs.fields(type(value))
            if getattr(value, field.name) is not None
        }
    if isinstance(value, enum.Enum):
        return value.value
    return repr(value)


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON (records as objects, ``repr`` for the rest)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=_plain)
    except (TypeError, ValueError):
        return repr(value)


def count(value: int, estimated: bool = False) -> str:
    """A count with thousands separators, ``≈`` before an estimate."""
    return f"{'≈' if estimated else ''}{value:,}"


def query(**params: Any) -> str:
    """A query string of the non-empty ``params`` (``?a=1&b=x``), or ``""``."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def path_part(value: str) -> str:
    """``value`` quoted to be one path segment of a URL (a job id, a job type)."""
    return quote(value, safe="")


def type_rows(summary: QueueSummary) -> list[tuple[str, dict[JobStatus, int]]]:
    """Counts by job type then status, types sorted."""
    rows: dict[str, dict[JobStatus, int]] = {}
    for (status, job_type), n in summary.counts.items():
        rows.setdefault(job_type, dict.fromkeys(STATUS_ORDER, 0))[status] = n
    return sorted(rows.items())


def can_pause(client: Any) -> bool:
    """Whether the client can pause and resume job types (flow control is there)."""
    return callable(getattr(client, "pause", None)) and callable(getattr(client, "resume", None))


async def limits_of(client: Any, job_types: Iterable[str]) -> dict[str, Any]:
    """Each type's limits record, when the client has ``get_limits`` (else ``{}``)."""
    get_limits = getattr(client, "get_limits", None)
    if not callable(get_limits):
        await trio.lowlevel.checkpoint()
        return {}
    return {job_type: await get_limits(job_type) for job_type in job_types}


async def schedules_of(client: Any) -> list[Any] | None:
    """The client's schedules, or ``None`` when it has no ``schedules`` method."""
    schedules = getattr(client, "schedules", None)
    if not callable(schedules):
        await trio.lowlevel.checkpoint()
        return None
    return list(await schedules())


def progress_percent(job: Job[Any]) -> float | None:
    """The job's progress, 0 to 100, or ``None`` when it reported none."""
    if job.progress is None:
        return None
    return max(0.0, min(100.0, float(job.progress)))


def limit_text(limits: Any) -> str:
    """One line describing a limits record (its fields read by name, all optional)."""
    parts = []
    for name, label in (("max_running", "max running"), ("max_running_per_tenant", "per tenant")):
        value = getattr(limits, name, None)
        if value is not None:
            parts.append(f"{label} {value}")
    rate = getattr(limits, "rate", None)
    if rate:
        parts.append(f"{rate[0]} per {duration(rate[1])}")
    if getattr(limits, "fair_tenants", False):
        parts.append("fair tenants")
    return ", ".join(parts) or "no limit"


FILTERS = {
    "age": age,
    "duration": duration,
    "timestamp": timestamp,
    "pretty_json": pretty_json,
    "count": count,
    "path_part": path_part,
    "limit_text": limit_text,
}
