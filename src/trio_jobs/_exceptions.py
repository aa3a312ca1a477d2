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


class StorageError(JobError):
    """The store failed: catch this to handle any store trouble in one place.

    Two kinds derive from it, and say what to do next:

    - :class:`StorageCorruptError`: the store cannot be used as it is (a damaged
      file, another program's database, a schema newer than this trio_jobs knows,
      or no trio_jobs tables where a read-only opening expected them). Retrying
      does not help; a person must look. A runner stops on it.
    - :class:`StorageUnavailableError`: the store cannot be reached or written
      right now (locked, disk full, permissions, the server is down). It may pass;
      a runner backs off and tries again.

    Attributes:
        transient: Whether trying again later may succeed.
    """

    transient: bool = False


class StorageCorruptError(StorageError, ValueError):
    """The store cannot be used as it is: damaged, foreign, too new, or missing.

    Also a :class:`ValueError`, which stores raised for these cases before.
    """

    transient = False


class StorageUnavailableError(StorageError, OSError):
    """The store cannot be reached or written right now; trying again later may work.

    Also an :class:`OSError`, which stores raised for these cases before.
    """

    transient = True
