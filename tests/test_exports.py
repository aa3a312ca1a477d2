"""The public API is exactly the names ``trio_jobs.__all__`` lists, and they all resolve.

When a public name is added or removed, this list changes with it, on purpose:
the exported set is the contract of API.md.
"""

from __future__ import annotations

import trio_jobs

EXPECTED = {
    # running jobs
    "JobClient",
    "BlockingJobClient",
    "JobLogFilter",
    "log_context",
    "JobContext",
    "JobHandle",
    "JobRunner",
    # records and enums
    "ErrorInfo",
    "Job",
    "JobPriority",
    "JobStats",
    "JobStatus",
    "RunnerEvent",
    "Schedule",
    "WorkerInfo",
    "JobTypeLimits",
    "HeldBack",
    "FlowControl",
    # errors
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "RunnerClosedError",
    "RunnerStoppedError",
    "StorageCorruptError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownJobTypeError",
    # retry toolkit
    "RetryConfig",
    "RetryStrategy",
    "compute_delay",
    "is_retryable_error",
    "retry",
    "with_retry",
    # storage
    "CancelOutcome",
    "Heartbeat",
    "JobStorage",
    "WorkerRegistry",
    "MemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(trio_jobs.__all__) == EXPECTED
    assert len(trio_jobs.__all__) == len(EXPECTED), "a name is listed twice"


def test_every_public_name_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from trio_jobs import *", namespace)
    for name in EXPECTED:
        assert getattr(trio_jobs, name) is namespace[name]
