"""trio_jobs: a job runner for Trio.

Submit work; it runs with bounded concurrency, by priority, with per-job
timeouts, retries with backoff and jitter, cancellation, progress and lifecycle
events, and a handle to await the result. The same API runs in memory, on an
embedded SQLite file, or on PostgreSQL shared by many worker processes.
"""

from ._blocking import BlockingJobClient as BlockingJobClient
from ._client import JobClient as JobClient
from ._context import JobContext as JobContext
from ._exceptions import JobCancelledError as JobCancelledError
from ._exceptions import JobError as JobError
from ._exceptions import JobFailedError as JobFailedError
from ._exceptions import JobNotFoundError as JobNotFoundError
from ._exceptions import JobTimeoutError as JobTimeoutError
from ._exceptions import RunnerClosedError as RunnerClosedError
from ._exceptions import RunnerStoppedError as RunnerStoppedError
from ._exceptions import StorageCorruptError as StorageCorruptError
from ._exceptions import StorageError as StorageError
from ._exceptions import StorageUnavailableError as StorageUnavailableError
from ._exceptions import UnknownJobTypeError as UnknownJobTypeError
from ._flow import HeldBack as HeldBack
from ._flow import JobTypeLimits as JobTypeLimits
from ._handle import JobHandle as JobHandle
from ._middleware import JobLogFilter as JobLogFilter
from ._middleware import log_context as log_context
from ._records import ErrorInfo as ErrorInfo
from ._records import Job as Job
from ._records import JobPriority as JobPriority
from ._records import JobStats as JobStats
from ._records import JobStatus as JobStatus
from ._records import RunnerEvent as RunnerEvent
from ._records import Schedule as Schedule
from ._records import WorkerInfo as WorkerInfo
from ._retry import RetryConfig as RetryConfig
from ._retry import RetryStrategy as RetryStrategy
from ._retry import compute_delay as compute_delay
from ._retry import is_retryable_error as is_retryable_error
from ._retry import retry as retry
from ._retry import with_retry as with_retry
from ._runner import JobRunner as JobRunner
from .storage import CancelOutcome as CancelOutcome
from .storage import FlowControl as FlowControl
from .storage import Heartbeat as Heartbeat
from .storage import JobStorage as JobStorage
from .storage import MemoryStorage as MemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import SQLiteStorage as SQLiteStorage
from .storage import WorkerRegistry as WorkerRegistry

__version__ = "0.1.0"

__all__ = [
    # running jobs
    "BlockingJobClient",
    "JobClient",
    "JobContext",
    "JobHandle",
    "JobRunner",
    # middleware
    "JobLogFilter",
    "log_context",
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
    "FlowControl",
    "MemoryStorage",
    "PostgresStorage",
    "SQLiteStorage",
]
