"""Handles: what ``submit`` returns, to await a job's result from anywhere."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar, final

from ._exceptions import JobCancelledError, JobFailedError, JobNotFoundError, JobTimeoutError
from ._records import ErrorInfo, Job, JobStatus

R = TypeVar("R")


class HandleOwner(Protocol):
    """What a handle needs from the runner or client that made it."""

    async def get_job(self, job_id: str) -> Job[Any] | None: ...

    async def cancel(self, job_id: str) -> bool: ...

    async def _wait_final(self, job_id: str) -> Job[Any]: ...

    def _local_error(self, job_id: str) -> BaseException | None: ...


@final
class JobHandle(Generic[R]):
    """A reference to one submitted job: await its result, read its status, cancel it.

    Handles come from :meth:`JobRunner.submit`, :meth:`JobRunner.get_handle` and the
    same methods of :class:`JobClient`; they are cheap, and any number of tasks may
    wait on one. There is no ``timeout=`` argument: wrap :meth:`wait` in
    :func:`trio.move_on_after` or :func:`trio.fail_after`.

    Attributes:
        id: The job's id.
        type: The job's type.
        deduplicated: True when ``submit(..., unique_key=...)`` stored nothing
            because an active job held the key: the handle is that job's.
    """

    __slots__ = ("_owner", "deduplicated", "id", "type")

    def __init__(
        self, job_id: str, job_type: str, owner: HandleOwner, *, deduplicated: bool = False
    ) -> None:
        self.id = job_id
        self.type = job_type
        self.deduplicated = deduplicated
        self._owner = owner

    def __repr__(self) -> str:
        return f"<JobHandle {self.type} {self.id}>"

    async def wait(self) -> R:
        """Wait until the job is final and return its result.

        A job that is already final answers at once.

        Raises:
            JobFailedError: the job ended FAILED (``__cause__`` is the original
                exception when it ran in this process).
            JobTimeoutError: the job ended TIMEOUT.
            JobCancelledError: the job ended CANCELLED.
            RunnerStoppedError: the runner stopped before the job was final.
            JobNotFoundError: the job was deleted from the store.
        """
        job = await self._owner._wait_final(self.id)
        return outcome(job, self._owner._local_error(self.id))  # type: ignore[no-any-return]

    async def get_status(self) -> Job[Any]:
        """Return the job's current snapshot.

        Raises:
            JobNotFoundError: the job was deleted from the store.
        """
        job = await self._owner.get_job(self.id)
        if job is None:
            raise JobNotFoundError(self.id)
        return job

    async def cancel(self) -> bool:
        """Cancel the job; see :meth:`JobRunner.cancel`."""
        return await self._owner.cancel(self.id)

    async def is_done(self) -> bool:
        """Return whether the job reached a final status (TIMEOUT included)."""
        job = await self._owner.get_job(self.id)
        return job is not None and job.status.is_final


def outcome(job: Job[Any], local_error: BaseException | None) -> Any:
    """Return a final job's result, or raise the error that stands for its end."""
    status = job.status
    if status is JobStatus.COMPLETED:
        return job.result
    if status is JobStatus.CANCELLED:
        raise JobCancelledError(f"job {job.id} was cancelled")
    info = job.last_error or ErrorInfo(message="no error recorded", type="unknown")
    if status is JobStatus.TIMEOUT:
        raise JobTimeoutError(f"job {job.id} timed out ({info.message})") from local_error
    raise JobFailedError(job.id, info) from local_error
