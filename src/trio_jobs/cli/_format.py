"""How the ``trio-jobs`` command reads and writes values: durations, tables, JSON records."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs

from .._flow import HeldBack
from .._records import ErrorInfo, Job, JobPriority, JobStats, JobStatus, Schedule, WorkerInfo
from .._retry import RetryConfig

T = TypeVar("T")

_DURATION_RE = re.compile(
    r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Parse ``30``, ``1.5s``, ``1e3``, ``250ms``, ``15m``, ``12h``, ``7d`` or ``2w`` into seconds.

    A bare number is seconds. The result is finite and not negative (``inf`` is
    no duration: :func:`parse_timeout` takes ``none`` for "no limit").

    Raises:
        ValueError: ``text`` is not such a duration, or is negative or too large.
    """
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 15m, 12h, 7d)")
    number, unit = match.groups()
    value = float(number) * _UNIT_SECONDS[(unit or "s").lower()]
    if value < 0:
        raise ValueError(f"a duration cannot be negative, got {text.strip()!r}")
    if not math.isfinite(value):
        raise ValueError(f"duration {text.strip()!r} is too large")
    return value


def parse_positive_duration(text: str) -> float:
    """Parse a duration (see :func:`parse_duration`) that must be more than zero."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"must be more than 0 seconds, got {text!r}")
    return value


def parse_run_at(text: str) -> datetime:
    """Parse an ISO 8601 time with a UTC offset (``2030-01-01T09:00+01:00``, ``...Z``)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"give a UTC offset (like +00:00 or Z): {text!r}")
    return when


def parse_timeout(text: str) -> float:
    """Parse a positive duration, or ``none`` for no timeout (``math.inf``).

    ``inf``, ``infinity`` and ``unlimited`` mean ``none`` too: every spelling of
    "no limit" is accepted and shown as ``none``, and every finite number (``1e9``
    included) is a limit.
    """
    if text.strip().lower() in ("none", "inf", "infinity", "unlimited"):
        return math.inf
    return parse_positive_duration(text)


def parse_positive_int(text: str) -> int:
    """Parse a whole number of at least 1.

    Raises:
        ValueError: ``text`` is not such a number.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a ``parse_*`` function for argparse, which then reports its message as it is."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    # argparse names the type in some messages.
    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def parse_priority(text: str) -> JobPriority:
    """Parse a priority name (``low`` .. ``critical``, any case) or number (0-3).

    Raises:
        ValueError: ``text`` names no priority.
    """
    name = text.strip()
    if name.isdigit() and int(name) in JobPriority._value2member_map_:
        return JobPriority(int(name))
    try:
        return JobPriority[name.upper()]
    except KeyError:
        choices = ", ".join(p.name.lower() for p in JobPriority)
        raise ValueError(f"invalid priority {text!r} (choose from {choices}, or 0-3)") from None


def parse_status(text: str) -> JobStatus:
    """Parse a status name (any case).

    Raises:
        ValueError: ``text`` names no status.
    """
    try:
        return JobStatus(text.strip().lower())
    except ValueError:
        choices = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"invalid status {text!r} (choose from {choices})") from None


def format_seconds(seconds: float | None) -> str:
    """Format a duration for people: ``12ms``, ``1.50s``, ``2m05s``, ``3h02m``, ``2d04h``."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "none"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_age(when: datetime | None, now: datetime | None = None) -> str:
    """Format how long ago ``when`` was: ``5s ago``; ``in 3.00s`` for the future."""
    if when is None:
        return "-"
    delta = ((now or datetime.now(UTC)) - when).total_seconds()
    if delta < 0:
        return f"in {format_seconds(-delta)}"
    return f"{format_seconds(delta)} ago"


def format_time(when: datetime | None) -> str:
    """Format a timestamp exactly, in UTC: ``2025-01-31 12:00:03.123Z``."""
    if when is None:
        return "-"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def priority_name(priority: int) -> str:
    """Return ``LOW`` .. ``CRITICAL`` for a priority value."""
    return JobPriority(priority).name


def attempts_text(job: Job[Any]) -> str:
    """Return ``attempts/max_attempts``, e.g. ``2/3``."""
    return f"{job.attempts}/{job.max_attempts}"


def one_line(text: str, width: int | None = None) -> str:
    """Collapse ``text`` onto one line, shortened to ``width`` characters when given."""
    flat = " ".join(text.split())
    if width is not None and len(flat) > width:
        return flat[: max(width - 3, 0)] + "..."
    return flat


def render_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[str] = ()
) -> str:
    """Lay out rows under headers in aligned columns (two spaces apart).

    Args:
        headers: The column titles.
        rows: One sequence of cell texts per row.
        right: Titles of the columns to align right (numbers).

    Returns:
        The table, without a trailing newline.
    """
    rows = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    right_set = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if header in right_set else cell.ljust(width)
            for cell, width, header in zip(cells, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def render_fields(fields: Sequence[tuple[str, str]]) -> str:
    """Lay out ``name: value`` pairs with the values aligned."""
    width = max((len(name) for name, _ in fields), default=0)
    return "\n".join(f"{(name + ':').ljust(width + 1)}  {value}" for name, value in fields)


# -- JSON -------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Turn records, enums and timestamps into plain JSON values (recursively)."""
    if isinstance(value, Job):
        return job_to_json(value)
    if isinstance(value, ErrorInfo):
        return {a.name: to_json(getattr(value, a.name)) for a in attrs.fields(ErrorInfo)}
    if isinstance(value, HeldBack):
        return {**attrs.asdict(value), "text": str(value)}
    if isinstance(value, JobStats):
        return {a.name: getattr(value, a.name) for a in attrs.fields(JobStats)}
    if isinstance(value, WorkerInfo | Schedule):
        return {a.name: to_json(getattr(value, a.name)) for a in attrs.fields(type(value))}
    if isinstance(value, frozenset):
        return sorted(to_json(v) for v in value)
    if isinstance(value, RetryConfig):
        return {
            a.name: to_json(getattr(value, a.name))
            for a in attrs.fields(RetryConfig)
            if a.name != "is_retryable"
        }
    if isinstance(value, JobPriority):
        return value.name.lower()
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "value"):  # other enums (RetryStrategy)
        return to_json(value.value)
    return repr(value)


def job_to_json(job: Job[Any]) -> dict[str, Any]:
    """Return every field of ``job`` as a JSON object (priority as its lower-case name)."""
    return {a.name: to_json(getattr(job, a.name)) for a in attrs.fields(Job)}


def jobs_to_json(jobs: Sequence[Job[Any]], held: Mapping[str, HeldBack]) -> list[dict[str, Any]]:
    """:func:`job_to_json` of each job, with its ``held_back`` record (null when none)."""
    return [{**job_to_json(job), "held_back": to_json(held.get(job.id))} for job in jobs]


def status_text(job: Job[Any], held: HeldBack | None = None) -> str:
    """The job's status, with what holds it back: ``pending (paused)``."""
    if held is None:
        return job.status.value
    return f"{job.status.value} ({held.reason})"


# -- human-readable records ---------------------------------------------------------------


def jobs_table(
    jobs: Sequence[Job[Any]],
    now: datetime | None = None,
    held: Mapping[str, HeldBack] | None = None,
) -> str:
    """Render jobs as the ``list`` command's table; ``held``: what holds jobs back, by id."""
    now = now or datetime.now(UTC)
    held = held or {}
    headers = (
        "ID", "TYPE", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED", "NEXT RUN", "DURATION",
        "PROGRESS",
    )  # fmt: skip
    rows = [
        (
            job.id,
            job.type,
            status_text(job, held.get(job.id)),
            priority_name(job.priority),
            attempts_text(job),
            format_age(job.created_at, now),
            next_run_text(job, now),
            format_seconds(job.execution_time),
            "-" if job.progress is None else f"{job.progress:.0f}%",
        )
        for job in jobs
    ]
    return render_table(headers, rows, right=("ATTEMPTS", "DURATION", "PROGRESS"))


def next_run_text(job: Job[Any], now: datetime | None = None) -> str:
    """When a waiting job runs: ``due`` (as soon as a worker is free), ``in 5.00s``; else ``-``."""
    if job.status not in (JobStatus.PENDING, JobStatus.RETRYING):
        return "-"
    now = now or datetime.now(UTC)
    if job.run_at is None or job.run_at <= now:
        return "due"
    return format_age(job.run_at, now)


def job_details(job: Job[Any], held: HeldBack | None = None) -> str:
    """Render every field of one job for the ``show`` command, traceback last.

    ``held``: what holds the job back, shown as a ``held back`` line after its status.
    """
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("type", job.type),
        ("status", job.status.value),
        *([("held back", str(held))] if held is not None else []),
        ("priority", priority_name(job.priority)),
        ("attempts", attempts_text(job)),
        ("created at", format_time(job.created_at)),
        ("run at", format_time(job.run_at)),
        ("started at", format_time(job.started_at)),
        ("completed at", format_time(job.completed_at)),
        ("timeout", "none" if job.timeout is None else format_seconds(job.timeout)),
        ("execution time", format_seconds(job.execution_time)),
        (
            "progress",
            "-"
            if job.progress is None
            else f"{job.progress:g}%"
            + (f" ({job.progress_message})" if job.progress_message else ""),
        ),
        ("tenant", job.tenant_id or "-"),
        ("payload", _compact(job.payload)),
        ("result", _compact(job.result)),
        ("metadata", _compact(dict(job.metadata))),
    ]
    if job.retry is not None:
        retry = job.retry
        fields.append(
            (
                "retry",
                f"{retry.strategy.value}, base delay {format_seconds(retry.base_delay)},"
                f" max delay {format_seconds(retry.max_delay)}, x{retry.backoff_multiplier:g}"
                + (f", jitter {retry.jitter_factor:g}" if retry.jitter else ", no jitter"),
            )
        )
    error = job.last_error
    if error is None:
        fields.append(("last error", "-"))
        return render_fields(fields)
    fields += [
        ("last error", f"{error.type}: {error.message}"),
        ("  attempt", str(error.attempt)),
        ("  at", format_time(error.timestamp)),
        ("  retryable", "yes" if error.retryable else "no"),
    ]
    text = render_fields(fields)
    if error.traceback:
        text += "\n\ntraceback of the last error:\n" + error.traceback.rstrip("\n")
    return text


def workers_table(workers: Sequence[WorkerInfo], now: datetime | None = None) -> str:
    """Render :class:`WorkerInfo` rows for the ``workers`` command."""
    if not workers:
        return "no live workers"
    now = now or datetime.now(UTC)
    rows = [
        (
            w.worker_id,
            w.hostname,
            str(w.pid),
            format_age(w.started_at, now),
            format_age(w.last_seen, now),
            f"{w.running}/{w.concurrency}",
            ", ".join(sorted(w.job_types)) or "-",
        )
        for w in workers
    ]
    headers = ("worker", "host", "pid", "started", "last seen", "running", "types")
    return render_table(headers, rows, right=("pid", "running"))


def schedules_table(schedules: Sequence[Schedule]) -> str:
    """Render :class:`Schedule` rows for the ``schedules`` command."""
    if not schedules:
        return "no schedules"
    rows = [
        (
            s.key,
            s.job_type,
            s.cron if s.cron is not None else f"every {format_seconds(s.every)}",
            s.timezone,
            format_time(s.last_run_at),
            format_time(s.next_run_at),
        )
        for s in schedules
    ]
    headers = ("key", "type", "expression", "timezone", "last run", "next run")
    return render_table(headers, rows)


def held_back_text(held: Mapping[str, HeldBack], pending: Mapping[str, int] | None) -> str:
    """The ``stats`` lines of the held-back types: ``mail: 120 pending, paused``."""
    lines = ["held back:"]
    for job_type in sorted(held):
        count = "" if pending is None else f"{pending.get(job_type, 0)} pending, "
        lines.append(f"  {job_type}: {count}{held[job_type]}")
    return "\n".join(lines)


def stats_table(stats: JobStats) -> str:
    """Render :class:`JobStats` for the ``stats`` command."""
    rows = [
        (status.value, str(getattr(stats, status.value)))
        for status in (
            JobStatus.PENDING,
            JobStatus.RUNNING,
            JobStatus.RETRYING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMEOUT,
        )
    ]
    table = render_table(("STATUS", "JOBS"), rows, right=("JOBS",))
    return (
        f"{table}\n\ntotal processed: {stats.total_processed}"
        f"\naverage execution time: {format_seconds(stats.average_execution_time)}"
    )


def _compact(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(value)


def parse_rate(text: str) -> tuple[int, float]:
    """``N/SECONDS`` (``20/1``, ``100/60``) -> ``(N, SECONDS)``."""
    starts, sep, seconds = text.partition("/")
    if not sep:
        raise ValueError(f"expected N/SECONDS (e.g. 20/1), got {text!r}")
    count = parse_positive_int(starts)
    window = float(seconds)
    if not 0 < window < float("inf"):
        raise ValueError(f"SECONDS must be > 0, got {seconds!r}")
    return count, window


def parse_weight(text: str) -> float:
    """A tenant weight: a number > 0."""
    weight = float(text)
    if not 0 < weight < float("inf"):
        raise ValueError(f"WEIGHT must be > 0, got {text!r}")
    return weight


def limits_table(rows: list[tuple[Any, int, int, str | None]]) -> str:
    """The flow settings of job types, with what runs now and what holds jobs back."""
    if not rows:
        return "no job type has limits"
    lines = []
    for limits, running, recent, reason in rows:
        parts = [
            "paused" if limits.paused else "active",
            f"running {running}" + ("" if limits.max_running is None else f"/{limits.max_running}"),
        ]
        if limits.max_running_per_tenant is not None:
            parts.append(f"per tenant {limits.max_running_per_tenant}")
        if limits.rate is not None:
            parts.append(f"rate {recent}/{limits.rate[0]} per {limits.rate[1]:g}s")
        if limits.fair_tenants:
            parts.append("fair tenants")
        if reason is not None:
            parts.append(f"held back by {reason}")
        lines.append(f"{limits.job_type}: " + ", ".join(parts))
    return "\n".join(lines)
