"""Periodic work the runner does besides running jobs: schedules' ticks and retention.

A schedule is a :class:`ScheduleSpec` (validated by :func:`make_spec`) whose ticks
are wall-clock instants: ``every`` ticks are the multiples of ``every`` seconds
since the Unix epoch, cron ticks come from :mod:`cronsim` read in the schedule's
timezone (so a daily 02:30 in Europe/Berlin follows daylight saving). The runner
sleeps on the Trio clock until each tick, with the Trio clock anchored to the wall
clock when it started (a :class:`Clock`), so ``MockClock`` drives schedules in tests.

Exactly one job per tick: every runner on the store tries to enqueue each tick
through :meth:`ScheduleStorage.enqueue_tick`, which writes the tick under a unique
constraint in the transaction that inserts the job; the losers store nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import trio

from ._exceptions import StorageCorruptError
from ._records import JobStatus, Schedule
from ._submit import build_job, check_seconds
from .storage._base import RetentionStorage, ScheduleStorage

if TYPE_CHECKING:
    from ._events import EventHub
    from ._retry import RetryConfig
    from ._scheduler import Scheduler
    from .storage._base import JobStorage

T = TypeVar("T")

#: At most this many jobs are deleted per statement by retention.
RETENTION_BATCH = 1000
#: Retention looks for old jobs at most this often (seconds).
RETENTION_INTERVAL = 60.0


@attrs.frozen
class Clock:
    """The Trio clock anchored to the wall clock at one moment (a runner's start)."""

    wall0: float = attrs.field(factory=lambda: time.time())
    trio0: float = attrs.field(factory=lambda: trio.current_time())

    def now(self) -> datetime:
        """The wall-clock time now, as the Trio clock measures it since the anchor."""
        return datetime.fromtimestamp(self.wall0 + trio.current_time() - self.trio0, UTC)

    def deadline(self, when: datetime) -> float:
        """The Trio-clock time at which the wall clock reads ``when``."""
        return self.trio0 + (when.timestamp() - self.wall0)


@attrs.frozen
class ScheduleSpec:
    """A validated schedule: what to enqueue, and when (see :meth:`JobRunner.add_schedule`)."""

    key: str
    job_type: str
    payload: Any
    cron: str | None
    every: float | None
    timezone: str
    backfill: float
    options: Mapping[str, Any]

    def ticks_after(self, after: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``after``, in order, as UTC datetimes."""
        if self.every is not None:
            k = math.floor(after.timestamp() / self.every) + 1
            while True:
                tick = datetime.fromtimestamp(k * self.every, UTC)
                if tick > after:
                    yield tick
                k += 1
        else:
            from cronsim import CronSim

            assert self.cron is not None
            zone = ZoneInfo(self.timezone)
            for local in CronSim(self.cron, after.astimezone(zone)):
                yield local.astimezone(UTC)

    def next_after(self, after: datetime) -> datetime | None:
        """The first tick after ``after`` (``None`` if the expression never fires)."""
        return next(self.ticks_after(after), None)

    def record(self, last_run_at: datetime | None, now: datetime) -> Schedule:
        """The public :class:`Schedule` of this spec."""
        return Schedule(
            key=self.key,
            job_type=self.job_type,
            cron=self.cron,
            every=self.every,
            timezone=self.timezone,
            next_run_at=self.next_after(now),
            last_run_at=last_run_at,
        )


def make_spec(
    job_type: str,
    payload: Any,
    *,
    cron: str | None,
    every: float | None,
    key: str | None,
    timezone: str,
    backfill: float,
    options: Mapping[str, Any],
) -> ScheduleSpec:
    """Validate :meth:`JobRunner.add_schedule`'s arguments.

    Raises:
        ValueError, TypeError: an argument is invalid; the message names it.
        ModuleNotFoundError: ``cron`` is given and cronsim is not installed.
    """
    if not isinstance(job_type, str) or not job_type:
        raise TypeError(f"job_type must be a non-empty str, got {job_type!r}")
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron or every")
    if key is None:
        key = job_type
    if not isinstance(key, str) or not key:
        raise TypeError(f"key must be a non-empty str, got {key!r}")
    if not isinstance(timezone, str):
        raise TypeError(f"timezone must be an IANA timezone name, got {timezone!r}")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {timezone!r} is not a known IANA timezone") from None
    check_seconds("backfill", backfill, allow_inf=False)
    if every is not None:
        check_seconds("every", every, allow_inf=False)
        if every == 0:
            raise ValueError("every must be > 0 seconds")
        every = float(every)
    else:
        if not isinstance(cron, str):
            raise TypeError(f"cron must be a str, got {cron!r}")
        if len(cron.split()) != 5:
            raise ValueError(f"cron must be a 5-field cron expression, got {cron!r}")
        try:
            from cronsim import CronSim, CronSimError
        except ModuleNotFoundError as exc:  # pragma: no cover - the extra is installed in tests
            raise ModuleNotFoundError(
                "cron schedules need cronsim: pip install 'trio-jobs[cron]'"
            ) from exc
        try:
            CronSim(cron, datetime.now(zone))
        except CronSimError as exc:
            raise ValueError(f"cron {cron!r} is not a valid cron expression: {exc}") from None
    return ScheduleSpec(
        key=key,
        job_type=job_type,
        payload=payload,
        cron=cron,
        every=every,
        timezone=timezone,
        backfill=float(backfill),
        options=dict(options),
    )


async def run_schedule(
    spec: ScheduleSpec,
    clock: Clock,
    enqueue: Callable[[ScheduleSpec, datetime], Awaitable[None]],
) -> None:
    """Enqueue ``spec``'s ticks forever: the backfilled ones first, then each on time.

    ``enqueue`` tries one tick (the store decides whether this runner wins it).
    Ticks at most ``backfill`` seconds old when this starts are tried at once,
    oldest first; older ones are skipped.
    """
    start = clock.now()
    after = start - timedelta(seconds=spec.backfill) if spec.backfill else start
    for tick in spec.ticks_after(after):
        if tick > clock.now():
            await trio.sleep_until(clock.deadline(tick))
        else:
            await trio.lowlevel.checkpoint()
        await enqueue(spec, tick)


def check_retention(retention: Mapping[JobStatus, float] | None) -> dict[JobStatus, float] | None:
    """Validate ``JobRunner(retention=...)``: final statuses to ages in seconds.

    Raises:
        TypeError, ValueError: not a mapping, a status that is not final, or a
            negative age; the message names ``retention``.
    """
    if retention is None:
        return None
    if not isinstance(retention, Mapping):
        raise TypeError(f"retention must be a mapping of JobStatus to seconds, got {retention!r}")
    checked: dict[JobStatus, float] = {}
    for status, age in retention.items():
        try:
            status = JobStatus(status)
        except ValueError:
            raise ValueError(f"retention: {status!r} is not a JobStatus") from None
        if not status.is_final:
            raise ValueError(f"retention: {status.value} is not a final status")
        check_seconds(f"retention[{status.value}]", age, allow_inf=False)
        checked[status] = float(age)
    return checked


def retention_interval(retention: Mapping[JobStatus, float]) -> float:
    """Seconds between retention passes: a tenth of the shortest age, 1 s to 60 s."""
    return min(RETENTION_INTERVAL, max(1.0, min(retention.values(), default=0.0) / 10))


def schedules_from_rows(
    rows: list[Schedule], local: Mapping[str, ScheduleSpec], now: datetime
) -> list[Schedule]:
    """The public schedules: the stored rows, and ``local`` specs not stored yet, by key.

    ``next_run_at`` is computed from each one's expression, after ``now``.
    """
    out: dict[str, Schedule] = {}
    for row in rows:
        spec = local.get(row.key) or ScheduleSpec(
            key=row.key,
            job_type=row.job_type,
            payload=None,
            cron=row.cron,
            every=row.every,
            timezone=row.timezone,
            backfill=0.0,
            options={},
        )
        out[row.key] = spec.record(row.last_run_at, now)
    for key, spec in local.items():
        if key not in out:
            out[key] = spec.record(None, now)
    return [out[key] for key in sorted(out)]


@final
class Periodic:
    """A runner's periodic work: its schedules' ticks and retention, in a nursery of their own.

    The runner owns one, starts :meth:`run` in its nursery, and cancels it before
    draining (a tick must not keep a draining runner busy). Schedules added
    before :meth:`run` starts begin with it; later ones begin at once.
    """

    def __init__(
        self,
        *,
        storage: JobStorage,
        scheduler: Scheduler,
        events: EventHub,
        logger: logging.Logger,
        worker_id: str,
        retention: Mapping[JobStatus, float] | None,
        default_retry: RetryConfig,
        default_timeout: float | None,
    ) -> None:
        self._storage = storage
        self._scheduler = scheduler
        self._events = events
        self._logger = logger
        self._worker_id = worker_id
        self._retention = retention
        self._default_retry = default_retry
        self._default_timeout = default_timeout
        #: This runner's schedules, by key.
        self.specs: dict[str, ScheduleSpec] = {}
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._clock: Clock | None = None

    def add(self, spec: ScheduleSpec) -> None:
        """Keep ``spec``, and start its task if :meth:`run` is running.

        Raises:
            ValueError: a schedule with the same key exists already.
        """
        if spec.key in self.specs:
            raise ValueError(f"a schedule with key {spec.key!r} exists already")
        self.specs[spec.key] = spec
        if self._nursery is not None:
            self._nursery.start_soon(self._run_schedule, spec)

    def now(self) -> datetime:
        """The wall-clock time by the clock :meth:`run` anchored, or by a fresh one."""
        return self._clock.now() if self._clock is not None else Clock().now()

    def cancel(self) -> None:
        """Stop the periodic tasks (for good: :meth:`run` does not start again)."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The task of schedules and retention; stopped when the runner stops."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._clock = Clock()
                self._nursery = nursery
                for spec in self.specs.values():
                    nursery.start_soon(self._run_schedule, spec)
                if self._retention:
                    nursery.start_soon(self._run_retention, self._retention)
                task_status.started()
                await trio.sleep_forever()

    async def _run_schedule(self, spec: ScheduleSpec) -> None:
        assert self._clock is not None
        assert isinstance(self._storage, ScheduleStorage)
        store = self._storage
        clock = self._clock
        await self._retry_store(
            f"storing schedule {spec.key!r}",
            lambda: store.put_schedule(spec.record(None, clock.now())),
        )
        await run_schedule(spec, self._clock, self._enqueue_tick)

    async def _retry_store(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` until it works, backing off as the claim loop does.

        A corrupt store stops the runner (and this task waits to be cancelled).
        """
        failures = 0
        while True:
            try:
                result = await call()
            except StorageCorruptError as exc:
                self._scheduler._fatal(exc)
                await trio.sleep_forever()
            except Exception as exc:
                failures += 1
                await trio.sleep(self._scheduler._store_failed(what, exc, failures))
                continue
            if failures:
                self._logger.warning("%s works again after %d failures", what, failures)
            return result

    async def _enqueue_tick(self, spec: ScheduleSpec, tick: datetime) -> None:
        """Try to enqueue ``spec``'s job for ``tick``; retried while the store fails."""
        assert isinstance(self._storage, ScheduleStorage)
        options = dict(spec.options)
        metadata = dict(options.pop("metadata") or {})
        metadata.update(schedule=spec.key, scheduled_for=tick.isoformat())
        job = build_job(
            spec.job_type,
            spec.payload,
            delay=0.0,
            metadata=metadata,
            default_retry=self._default_retry,
            default_timeout=self._default_timeout,
            **options,
        )
        store = self._storage
        stored = await self._retry_store(
            f"enqueueing schedule {spec.key!r}", lambda: store.enqueue_tick(spec.key, tick, job)
        )
        if stored:
            self._scheduler.remember_policy(job)
            if self._events.active:
                self._events.emit("job:submitted", job)

    async def _run_retention(self, retention: Mapping[JobStatus, float]) -> None:
        """Delete old final jobs in bounded batches, while no other runner does."""
        store = self._storage
        if not isinstance(store, RetentionStorage):
            self._logger.warning("%s cannot trim old jobs: retention is off", type(store).__name__)
            return
        interval = retention_interval(retention)
        while True:
            for status, age in retention.items():
                while True:
                    try:
                        deleted = await store.purge_batch(
                            status, age, limit=RETENTION_BATCH, holder=self._worker_id
                        )
                    except StorageCorruptError as exc:
                        self._scheduler._fatal(exc)
                        return
                    except Exception as exc:
                        # Tried again at the next interval.
                        self._scheduler._store_failed("deleting old jobs", exc, 1)
                        break
                    if deleted is None or deleted < RETENTION_BATCH:
                        break
            await trio.sleep(interval)
