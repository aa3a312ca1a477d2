"""The vocabulary: priorities, statuses, job records, errors records, stats, events.

Everything here is a value: frozen, hashable where it can be, and safe to hand to
user code. Records a user receives are snapshots, never live state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import attrs

from ._retry import RetryConfig

P = TypeVar("P")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class JobPriority(enum.IntEnum):
    """How urgent a job is: among ready jobs, higher priorities start first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class JobStatus(str, enum.Enum):
    """Where a job is in its life.

    ``PENDING`` jobs wait for a worker (possibly for a delay to pass), ``RUNNING``
    jobs are in an attempt, ``RETRYING`` jobs wait out a backoff after a failed
    attempt. The other four are final: see :attr:`is_final`.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def is_final(self) -> bool:
        """Whether a job never leaves this status (completed, failed, cancelled or timeout)."""
        return self in _FINAL

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMEOUT})


def _as_priority(value: int) -> JobPriority:
    return value if type(value) is JobPriority else JobPriority(value)


def _as_status(value: str) -> JobStatus:
    return value if type(value) is JobStatus else JobStatus(value)


@attrs.frozen
class ErrorInfo:
    """What went wrong in one attempt (the seed's ``JobError`` record).

    Attributes:
        message: ``str()`` of the exception.
        type: The exception's qualified class name, e.g. ``"ValueError"``.
        traceback: The formatted traceback, when one was captured.
        attempt: The 1-based number of the attempt that raised it.
        timestamp: When it was recorded (UTC).
        retryable: Whether the retry policy judged it worth another attempt.
    """

    message: str
    type: str
    traceback: str | None = None
    attempt: int = 0
    timestamp: datetime = attrs.field(factory=utcnow)
    retryable: bool = False


@attrs.frozen
class Job(Generic[P]):
    """A snapshot of one job, as stored. Construct it with keywords.

    A :class:`Job` never changes: the runner and the stores make new snapshots as
    the job moves through its life. ``attempts`` counts attempts started, the
    current one included. ``run_at`` is the wall-clock time from which the job is
    eligible to run (after a ``delay`` or a retry backoff), or ``None`` for at once.
    ``execution_time`` is the duration of the last attempt, in seconds.

    ``retry`` is the retry policy the job was submitted with (``None``: the
    runner's default). It grows the API's list of fields so that a worker in
    another process retries the job exactly as its producer asked.

    ``unique_key``: while a job with this key is pending, delayed, running or
    retrying, submitting another with the same key stores nothing (see
    ``JobHandle.deduplicated``).
    """

    id: str
    type: str
    payload: P = attrs.field(default=None)
    status: JobStatus = attrs.field(default=JobStatus.PENDING, converter=_as_status)
    priority: JobPriority = attrs.field(default=JobPriority.NORMAL, converter=_as_priority)
    attempts: int = 0
    max_attempts: int = 3
    created_at: datetime = attrs.field(factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    run_at: datetime | None = None
    timeout: float | None = None
    last_error: ErrorInfo | None = None
    result: Any = None
    execution_time: float | None = None
    progress: float | None = None
    progress_message: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    tenant_id: str | None = None
    retry: RetryConfig | None = None
    unique_key: str | None = None


@attrs.frozen
class JobStats:
    """Counts of jobs by status, as :meth:`JobRunner.stats` reports them.

    ``total_processed`` counts jobs in a final status; ``average_execution_time``
    is the mean ``execution_time`` (seconds) of completed jobs, or ``None`` when
    none completed.
    """

    pending: int = 0
    running: int = 0
    retrying: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timeout: int = 0
    total_processed: int = 0
    average_execution_time: float | None = None


@attrs.frozen
class WorkerInfo:
    """One live runner on a store, as ``workers()`` reports it (runner or client).

    Attributes:
        worker_id: The runner's :attr:`JobRunner.worker_id` (``host:pid:random``).
        hostname: The machine it runs on.
        pid: Its process id there.
        started_at: When it entered its ``async with`` block (UTC).
        last_seen: Its last heartbeat (UTC).
        concurrency: How many handlers it runs at once at most.
        running: How many attempts it held at its last heartbeat.
        job_types: The job types it has handlers for (the ones it claims).
    """

    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    last_seen: datetime
    concurrency: int
    running: int
    job_types: frozenset[str]


@attrs.frozen
class Schedule:
    """A periodic job, as ``schedules()`` reports it (runner or client).

    Attributes:
        key: The schedule's identity across runners (its job type by default).
        job_type: The type of the jobs it enqueues.
        cron: Its 5-field cron expression, or ``None`` for an ``every`` schedule.
        every: Its period in seconds, or ``None`` for a cron schedule.
        timezone: The IANA timezone its cron expression is read in.
        next_run_at: Its next tick after now (UTC), or ``None`` if it has none.
        last_run_at: The last tick a runner enqueued (UTC), or ``None``.
    """

    key: str
    job_type: str
    cron: str | None
    every: float | None
    timezone: str
    next_run_at: datetime | None
    last_run_at: datetime | None


@attrs.frozen
class RunnerEvent:
    """One lifecycle event, as delivered by :meth:`JobRunner.subscribe`.

    ``name`` is one of the event names accepted by :meth:`JobRunner.on`; the other
    fields are filled where the event has them (``result`` for ``job:completed``,
    ``error`` for ``job:failed`` and ``runner:error``, ``attempt`` and ``delay``
    for ``job:retrying``).
    """

    name: str
    job: Job[Any] | None = None
    result: Any = None
    error: BaseException | None = None
    attempt: int | None = None
    delay: float | None = None


def _make_replace() -> Any:
    # attrs.evolve re-runs __init__ (converters, factories) and introspects the
    # fields on every call, and a frozen class's __init__ sets each field through
    # object.__setattr__; the stores copy a record at every status change, so we
    # generate a plain copy through the slots' own descriptors once. Values are
    # trusted: only the runner and the stores call it, with values of the right types.
    names = [a.name for a in attrs.fields(Job)]
    setters = {name: Job.__dict__[name].__set__ for name in names}
    namespace: dict[str, Any] = {"new_job": object.__new__, "Job": Job, "setters": setters}
    lines = ["def replace(job, changes):", "    new = new_job(Job)"]
    for i, name in enumerate(names):
        namespace[f"set_{i}"] = setters[name]
        lines.append(f"    set_{i}(new, job.{name})")
    lines += [
        "    for name, value in changes.items():",
        "        setters[name](new, value)",
        "    return new",
    ]
    exec("\n".join(lines), namespace)
    return namespace["replace"]


_replace = _make_replace()

#: The fields :func:`new_job` takes; every other field starts at its default.
_NEW_JOB_FIELDS = (
    "id",
    "type",
    "payload",
    "priority",
    "max_attempts",
    "created_at",
    "run_at",
    "timeout",
    "metadata",
    "tenant_id",
    "retry",
)


def _make_new_job() -> Any:
    # ``submit`` builds one record per job: like ``_replace``, a generated plain
    # constructor (values already validated) instead of the frozen __init__.
    namespace: dict[str, Any] = {"new_job": object.__new__, "Job": Job}
    lines = [f"def new_pending({', '.join(_NEW_JOB_FIELDS)}):", "    new = new_job(Job)"]
    fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(Job)
    for i, field in enumerate(fields):
        namespace[f"set_{i}"] = Job.__dict__[field.name].__set__
        if field.name in _NEW_JOB_FIELDS:
            value = field.name
        else:
            assert not isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
            namespace[f"default_{i}"] = field.default
            value = f"default_{i}"
        lines.append(f"    set_{i}(new, {value})")
    lines.append("    return new")
    exec("\n".join(lines), namespace)
    return namespace["new_pending"]


#: ``new_job(id, type, payload, priority, max_attempts, created_at, run_at, timeout,
#: metadata, tenant_id, retry)``: a new PENDING record from validated values.
new_job: Any = _make_new_job()


def replace(job: Job[P], **changes: Any) -> Job[P]:
    """Return a copy of ``job`` with ``changes`` (like :func:`attrs.evolve`, faster)."""
    return _replace(job, changes)  # type: ignore[no-any-return]
