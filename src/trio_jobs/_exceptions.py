"""The exception hierarchy. Every error trio_jobs raises on purpose is a JobError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._records import ErrorInfo


class JobError(Exception):
    """Base class of every error trio_jobs raises on purpose."""


class JobFailedError(JobError):
    """The job ended ``FAILED``: its last attempt raised.

    Attributes:
        job_id: The job's id.
        error_info: The recorded error of the last attempt. When the job ran in this
            process, the original exception is also this error's ``__cause__``.
    """

    def __init__(self, job_id: str, error_info: ErrorInfo) -> None:
        super().__init__(f"job {job_id} failed: {error_info.type}: {error_info.message}")
        self.job_id = job_id
        self.error_info = error_info


class JobCancelledError(JobError):
    """The job ended ``CANCELLED``."""


class JobTimeoutError(JobError, TimeoutError):
    """An attempt ran past the job's timeout; from ``wait()``, the job ended ``TIMEOUT``."""


class UnknownJobTypeError(JobError, LookupError):
    """No handler is registered for the job's type."""


class JobNotFoundError(JobError, LookupError):
    """The store knows no job with that id."""


class RunnerClosedError(JobError):
    """The runner is not accepting work: it was not entered yet, or it has stopped."""


class RunnerStoppedError(JobError):
    """The runner stopped before the job reached a final status."""
