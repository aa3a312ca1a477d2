"""A client for code that is not Trio: a Trio loop of its own in a background thread.

:class:`BlockingJobClient` wraps a :class:`JobClient` running in a Trio loop on a
daemon thread. Each blocking call from any thread is carried into that loop with
:func:`trio.from_thread.run` (one hop there and back) and runs as its own task, so
threads do not queue behind one another's waits.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, final

import trio

from ._client import JobClient
from ._exceptions import RunnerClosedError
from ._records import Job, JobPriority, JobStats, JobStatus
from ._retry import RetryConfig
from ._submit import check_seconds
from .storage._base import JobStorage

T = TypeVar("T")


@final
class BlockingJobClient:
    """Submits, inspects and waits for jobs from plain threads: Django, Flask, scripts.

    It runs a :class:`JobClient` in a Trio loop of its own, on a background
    thread, and carries each call there and back. Every method blocks the calling
    thread and may be called from any number of threads at once (a web server's
    worker threads), but never from inside a Trio loop: Trio code uses
    :class:`JobClient`. An asyncio app calls it through its ``to_thread``::

        with BlockingJobClient(SQLiteStorage("jobs.db")) as jobs:
            job_id = jobs.submit("send-email", {"to": "ada@example.com"})
            print(jobs.wait(job_id, timeout=30))

    :meth:`open` and :meth:`close` do what the ``with`` block does, for a client
    that lives as long as the process (one per process, created after any
    ``fork``). A client still open when the interpreter exits is closed then.

    The store belongs to the client's loop: do not share the store object with a
    runner or another client.

    Args:
        storage: The store the workers use.
        default_retry: As for :class:`JobClient`.
        default_timeout: As for :class:`JobClient`.
        poll_interval: As for :class:`JobClient`.
    """

    def __init__(
        self,
        storage: JobStorage,
        *,
        default_retry: RetryConfig | None = None,
        default_timeout: float | None = 300.0,
        poll_interval: float = 0.5,
    ) -> None:
        # Validated here, in the caller's thread, rather than in the loop.
        self._client = JobClient(
            storage,
            default_retry=default_retry,
            default_timeout=default_timeout,
            poll_interval=poll_interval,
        )
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._closing: trio.Event | None = None
        self._calls: set[trio.CancelScope] = set()
        self._drained: trio.Event | None = None  # set when the last call left, on close
        self._state = "new"  # new -> open -> closed

    @property
    def storage(self) -> JobStorage:
        """The store this client works on."""
        return self._client.storage

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> Self:
        """Start the background loop and open the store; return the client.

        Raises:
            RuntimeError: the client was opened before.
            Exception: whatever opening the store raised (the loop is gone then).
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a BlockingJobClient can be opened only once")
            self._state = "open"
            started: list[BaseException | trio.lowlevel.TrioToken] = []
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run_loop,
                args=(started, ready),
                name="trio-jobs-blocking-client",
                daemon=True,  # an unclosed client must not hold the interpreter up
            )
            self._thread.start()
            ready.wait()
            result = started[0]
            if isinstance(result, BaseException):
                self._state = "closed"
                self._thread.join()
                raise result
            self._token = result
            atexit.register(self.close)
        return self

    def close(self) -> None:
        """Close the client: cancel calls in flight, close the store, stop the loop.

        Calls in flight raise :class:`RunnerClosedError`. Harmless to call twice or
        on a client never opened.
        """
        with self._lock:
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closed"
            token, self._token = self._token, None
            thread = self._thread
        atexit.unregister(self.close)
        assert token is not None
        assert thread is not None
        with contextlib.suppress(trio.RunFinishedError):  # (the loop ended on its own)
            trio.from_thread.run_sync(self._begin_close, trio_token=token)
        thread.join()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run_loop(
        self, started: list[BaseException | trio.lowlevel.TrioToken], ready: threading.Event
    ) -> None:
        try:
            trio.run(self._main, started, ready)
        except BaseException as exc:  # reported to open(), in the caller's thread
            if not started:
                started.append(exc)
            ready.set()

    async def _main(
        self, started: list[BaseException | trio.lowlevel.TrioToken], ready: threading.Event
    ) -> None:
        self._closing = closing = trio.Event()
        async with self._client:
            started.append(trio.lowlevel.current_trio_token())
            ready.set()
            await closing.wait()
            # Calls still in flight end with RunnerClosedError; wait for them to
            # leave before the store closes under them.
            if self._calls:
                self._drained = trio.Event()
                for scope in self._calls:
                    scope.cancel()
                await self._drained.wait()

    def _begin_close(self) -> None:
        assert self._closing is not None
        self._closing.set()

    # -- carrying calls into the loop ------------------------------------------------

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        token = self._token
        if token is None:
            raise RunnerClosedError(
                "the client is not open (use `with BlockingJobClient(...)` or open())"
            )
        try:
            return trio.from_thread.run(self._in_loop, fn, args, kwargs, trio_token=token)
        except trio.RunFinishedError:
            raise RunnerClosedError("the client was closed") from None

    async def _in_loop(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        assert self._closing is not None
        if self._closing.is_set():
            await trio.lowlevel.checkpoint()
            raise RunnerClosedError("the client was closed")
        with trio.CancelScope() as scope:
            self._calls.add(scope)
            try:
                return await fn(*args, **kwargs)
            finally:
                self._calls.discard(scope)
                if not self._calls and self._drained is not None:
                    self._drained.set()
        raise RunnerClosedError("the client was closed while the call was in flight")

    # -- the API ---------------------------------------------------------------------

    def submit(
        self,
        job_type: str,
        payload: Any = None,
        /,
        *,
        priority: JobPriority | int = JobPriority.NORMAL,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        delay: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> str:
        """Store a new job for a worker to run; return its id.

        The arguments are those of :meth:`JobClient.submit`.

        Raises:
            RunnerClosedError: the client is not open.
            ValueError, TypeError: an argument is invalid (nothing is stored).
        """
        handle = self._call(
            self._client.submit,
            job_type,
            payload,
            priority=priority,
            retry=retry,
            timeout=timeout,
            delay=delay,
            metadata=metadata,
            tenant_id=tenant_id,
        )
        return handle.id

    def submit_many(self, job_type: str, payloads: Iterable[Any], /, **options: Any) -> list[str]:
        """Store one job per payload, all or none; return their ids.

        See :meth:`JobClient.submit_many`.

        ``options`` are those of :meth:`submit`, applied to each job.

        Raises:
            RunnerClosedError: the client is not open.
            ValueError, TypeError: a payload or an option is invalid (nothing is stored).
        """
        payloads = list(payloads)  # consumed in the caller's thread, not the loop's
        handles = self._call(self._client.submit_many, job_type, payloads, **options)
        return [handle.id for handle in handles]

    def get_job(self, job_id: str) -> Job[Any] | None:
        """Return the job's current snapshot, or ``None`` for an unknown id."""
        return self._call(self._client.get_job, job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int | None = None,
    ) -> list[Job[Any]]:
        """Return snapshots of jobs, newest first; see :meth:`JobClient.list_jobs`."""
        return self._call(self._client.list_jobs, status=status, job_type=job_type, limit=limit)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job; see :meth:`JobClient.cancel`."""
        return self._call(self._client.cancel, job_id)

    def retry(self, job_id: str) -> bool:
        """Run a FAILED, TIMEOUT or CANCELLED job again; see :meth:`JobClient.retry`.

        Raises:
            ValueError: an active job holds the job's ``unique_key``.
        """
        return self._call(self._client.retry, job_id)

    def purge(
        self, *, older_than: float = 0.0, statuses: Collection[JobStatus | str] | None = None
    ) -> int:
        """Delete old final jobs; see :meth:`JobClient.purge`."""
        return self._call(self._client.purge, older_than=older_than, statuses=statuses)

    def stats(self) -> JobStats:
        """Return counts of jobs by status."""
        return self._call(self._client.stats)

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job is final; return its result.

        Args:
            job_id: The job to wait for.
            timeout: Give up after this many seconds; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` passed first (the job is left alone).
            JobFailedError, JobCancelledError, JobTimeoutError: as :meth:`JobHandle.wait`.
            JobNotFoundError: the store knows no such job.
            ValueError: ``timeout`` is negative or NaN.
        """
        check_seconds("timeout", timeout, allow_none=True)
        return self._call(self._wait, job_id, math.inf if timeout is None else float(timeout))

    async def _wait(self, job_id: str, timeout: float) -> Any:
        handle = await self._client.get_handle(job_id)
        with trio.move_on_after(timeout):
            return await handle.wait()
        raise TimeoutError(f"job {job_id} was not final after {timeout} s")
