"""What a handler receives besides its job: logging, cancellation, progress, metadata."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Generic, TypeVar, final

import trio

from ._records import Job, replace

P = TypeVar("P")


class _JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the job and merges job fields into each record's extra."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"[{extra['job_type']} {extra['job_id']} #{extra['attempt']}] {msg}", kwargs


@final
class JobContext(Generic[P]):
    """Handed to a handler with its job: the attempt's tools.

    Attributes:
        job: The job as it was when this attempt started (progress and metadata
            updates made through this context are reflected here).
        attempt: This attempt's number, 1-based.
        cancel_scope: The attempt's :class:`trio.CancelScope`. Its deadline is the
            job's timeout; ``cancel()`` on the job cancels it. A handler may shield
            cleanup with its own scopes, as in any Trio code.
    """

    __slots__ = (
        "_cancelled_flag",
        "_log",
        "_logger",
        "_loop_thread",
        "_on_update",
        "_token",
        "attempt",
        "cancel_scope",
        "job",
    )

    def __init__(
        self,
        job: Job[P],
        *,
        logger: logging.Logger,
        cancel_scope: trio.CancelScope,
        on_update: Callable[[JobContext[P], bool], None],
    ) -> None:
        self.job = job
        self.attempt = job.attempts
        self.cancel_scope = cancel_scope
        self._logger = logger
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._on_update = on_update
        # Set for a plain-def handler: how its worker thread reaches the Trio loop.
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread = 0
        self._cancelled_flag: threading.Event | None = None

    def _link_thread(self, cancelled: threading.Event) -> None:
        """Make this context usable from a worker thread (a plain-def handler's).

        ``cancelled`` is set when the attempt's scope is cancelled; from the Trio
        thread the scope itself is asked.
        """
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._cancelled_flag = cancelled

    def _from_thread(self) -> trio.lowlevel.TrioToken | None:
        """The loop's token when called from another thread than the loop's; else None."""
        if self._token is None or threading.get_ident() == self._loop_thread:
            return None
        return self._token

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger adapter whose records carry ``job_id``, ``job_type`` and ``attempt``."""
        if self._log is None:
            job = self.job
            self._log = _JobLogAdapter(
                self._logger, {"job_id": job.id, "job_type": job.type, "attempt": self.attempt}
            )
        return self._log

    @property
    def cancelled(self) -> bool:
        """Whether this attempt was cancelled (job cancelled, timed out, or runner force-stopped).

        The seed's ``ctx.signal.aborted``. In Trio the next checkpoint raises
        :class:`trio.Cancelled` anyway; this is for code that polls. In a plain
        ``def`` handler's thread, which no cancellation can interrupt, it turns True
        the moment the attempt is cancelled or times out: check it to stop early.
        """
        flag = self._cancelled_flag
        if flag is not None and self._from_thread() is not None:
            return flag.is_set()
        return self.cancel_scope.cancel_called

    @property
    def deadline(self) -> float:
        """When this attempt times out, on the Trio clock; ``math.inf`` without a timeout."""
        return self.cancel_scope.deadline

    def report_progress(self, progress: float, message: str | None = None) -> None:
        """Record how far the job got, from 0 to 100, with an optional message.

        Emits ``job:progress`` at once; the store is updated in the background
        (writes coalesce, and the last one lands before the attempt settles).
        Safe to call from a plain ``def`` handler's thread.

        Raises:
            ValueError: ``progress`` is outside 0..100 or NaN.
            TypeError: ``progress`` is not a number or ``message`` not a string.
        """
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise TypeError(f"progress must be a number, got {progress!r}")
        if math.isnan(progress) or not 0 <= progress <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {progress!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a str or None, got {message!r}")
        token = self._from_thread()
        if token is not None:
            trio.from_thread.run_sync(self._set_progress, progress, message, trio_token=token)
        else:
            self._set_progress(progress, message)

    def _set_progress(self, progress: float, message: str | None) -> None:
        self.job = replace(self.job, progress=float(progress), progress_message=message)
        self._on_update(self, True)

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into the job's metadata (stored in the background, like progress).

        Unlike :meth:`report_progress`, it emits no event. Safe to call from a
        plain ``def`` handler's thread.

        Raises:
            TypeError: ``metadata`` is not a mapping.
        """
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {metadata!r}")
        token = self._from_thread()
        if token is not None:
            trio.from_thread.run_sync(self._merge_metadata, dict(metadata), trio_token=token)
        else:
            self._merge_metadata(metadata)

    def _merge_metadata(self, metadata: Mapping[str, Any]) -> None:
        self.job = replace(self.job, metadata={**self.job.metadata, **metadata})
        self._on_update(self, False)
