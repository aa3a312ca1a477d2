"""Prometheus metrics: gauges read from the store at each scrape, counters fed by a runner.

Every :class:`JobMetrics` has its own ``CollectorRegistry``
(never the process-wide default), so two apps, or an app and a test, never share
or collide on a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .._records import Job, utcnow
from ..storage._base import WorkerRegistry
from ..storage._browse import JobBrowser

if TYPE_CHECKING:
    from .._runner import JobRunner

#: Buckets (seconds) of the two histograms: from a millisecond to an hour.
BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip


class JobMetrics:
    """The trio_jobs metrics, in a registry of their own.

    Two sources feed them:

    - :meth:`refresh` reads the store (at each scrape): ``trio_jobs_jobs`` by
      ``status`` and ``job_type``, ``trio_jobs_workers`` and
      ``trio_jobs_oldest_pending_age_seconds``;
    - :meth:`attach` listens to a runner's events: the counters
      ``trio_jobs_completed_total``, ``trio_jobs_failed_total`` (failed or timed out
      for good), ``trio_jobs_retried_total``, and the histograms
      ``trio_jobs_attempt_duration_seconds`` and ``trio_jobs_submit_to_start_seconds``,
      all by ``job_type``. A dashboard process runs no jobs: there they stay at zero,
      and the workers' own endpoints (``trio-jobs worker --metrics-port``) count.

    Args:
        registry: Where to register them; a new ``CollectorRegistry`` by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("trio_jobs_jobs", "Jobs in the store", ["status", "job_type"], registry=r)
        self.workers = Gauge("trio_jobs_workers", "Live workers on the store", registry=r)
        self.oldest_pending_age = Gauge(
            "trio_jobs_oldest_pending_age_seconds",
            "Age of the oldest pending job that is ready to run (0 when none)",
            registry=r,
        )
        self.completed = Counter("trio_jobs_completed", "Jobs completed", ["job_type"], registry=r)
        self.failed = Counter(
            "trio_jobs_failed", "Jobs that failed or timed out for good", ["job_type"], registry=r
        )
        self.retried = Counter(
            "trio_jobs_retried", "Attempts that failed and were retried", ["job_type"], registry=r
        )
        self.attempt_duration = Histogram(
            "trio_jobs_attempt_duration_seconds",
            "How long attempts ran, whatever their end",
            ["job_type"],
            buckets=BUCKETS,
            registry=r,
        )
        self.submit_to_start = Histogram(
            "trio_jobs_submit_to_start_seconds",
            "From the moment a job could run (submit, or the end of its delay) to its first start",
            ["job_type"],
            buckets=BUCKETS,
            registry=r,
        )

    # -- from the store -------------------------------------------------------------

    async def refresh(self, storage: Any) -> None:
        """Set the gauges from ``storage`` (its summary; its workers, if it keeps them)."""
        if isinstance(storage, JobBrowser):
            summary = await storage.summarize(minutes=1)
            self.jobs.clear()
            for (status, job_type), count in summary.counts.items():
                self.jobs.labels(status=status.value, job_type=job_type).set(count)
            oldest = summary.oldest_pending_at
            age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
            self.oldest_pending_age.set(age)
        if isinstance(storage, WorkerRegistry):
            self.workers.set(len(await storage.workers()))

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- from a runner's events -------------------------------------------------------

    def attach(self, runner: JobRunner) -> Callable[[], None]:
        """Count ``runner``'s attempts from now on; return a function that stops counting."""
        offs = [
            runner.on("job:started", self._started),
            runner.on("job:completed", self._completed),
            runner.on("job:failed", self._failed),
            runner.on("job:timeout", self._timed_out),
            runner.on("job:retrying", self._retrying),
            runner.on("job:cancelled", self._ended),
        ]

        def detach() -> None:
            for off in offs:
                off()

        return detach

    def _started(self, job: Job[Any]) -> None:
        if job.attempts == 1 and job.started_at is not None:
            ready = max(job.created_at, job.run_at or job.created_at)
            wait = (job.started_at - ready).total_seconds()
            self.submit_to_start.labels(job_type=job.type).observe(max(0.0, wait))

    def _ended(self, job: Job[Any], *_: Any) -> None:
        duration = job.execution_time
        if duration is None and job.started_at is not None:
            duration = (utcnow() - job.started_at).total_seconds()
        if duration is not None:
            self.attempt_duration.labels(job_type=job.type).observe(max(0.0, duration))

    def _completed(self, job: Job[Any], result: Any) -> None:
        self.completed.labels(job_type=job.type).inc()
        self._ended(job)

    def _failed(self, job: Job[Any], error: BaseException) -> None:
        self.failed.labels(job_type=job.type).inc()
        self._ended(job)

    def _timed_out(self, job: Job[Any]) -> None:
        # job:timeout comes for every timed-out attempt: a final one counts as failed
        # (its job:failed is not sent), a retried one as retried (job:retrying is).
        if job.attempts >= job.max_attempts:
            self.failed.labels(job_type=job.type).inc()
        self._ended(job)

    def _retrying(self, job: Job[Any], attempt: int, delay: float) -> None:
        self.retried.labels(job_type=job.type).inc()
        if not _timed_out_just_now(job):
            self._ended(job)


def _timed_out_just_now(job: Job[Any]) -> bool:
    """Whether a retrying job's last attempt timed out (job:timeout observed it already)."""
    error = job.last_error
    return error is not None and error.type == "JobTimeoutError"


__all__ = ["JobMetrics"]
