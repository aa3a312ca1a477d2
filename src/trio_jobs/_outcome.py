"""How an attempt's end is judged and recorded: errors, exception groups, retryability.

Pure functions, no I/O: the engine (``_attempt``) decides *when* to judge, this
module decides *what* an error means. Kept apart so that the rules API.md states
about errors ("a group with one leaf is judged as that leaf", "a predicate that
raises is logged and the heuristics decide", "held errors keep no frames alive")
each live in one place.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from ._records import ErrorInfo, utcnow
from ._retry import RetryConfig, is_retryable_error


def error_info(error: BaseException, attempt: int, *, retryable: bool) -> ErrorInfo:
    """Record ``error`` as an :class:`ErrorInfo` (its traceback as text)."""
    cls = type(error)
    module = cls.__module__
    if module == "builtins":
        name = cls.__qualname__
    elif module.startswith("trio_jobs."):
        name = f"trio_jobs.{cls.__qualname__}"  # our errors by their public name
    else:
        name = f"{module}.{cls.__qualname__}"
    return ErrorInfo(
        message=str(error),
        type=name,
        traceback="".join(traceback.format_exception(error)),
        attempt=attempt,
        timestamp=utcnow(),
        retryable=retryable,
    )


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, exception groups flattened (``error`` itself if none)."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    found: list[BaseException] = []
    for inner in error.exceptions:
        found.extend(leaves(inner))
    return found


def unwrap(error: BaseException) -> BaseException:
    """A group with exactly one leaf stands for that leaf; anything else for itself.

    A handler that opens a nursery sees its one real error wrapped in an
    ``ExceptionGroup``; judging and recording the group would hide the error
    (``PermissionError("403 forbidden")`` judged as "Exceptions from Trio nursery").
    """
    if isinstance(error, BaseExceptionGroup):
        found = leaves(error)
        if len(found) == 1:
            return found[0]
    return error


def judge(
    error: BaseException,
    policy: RetryConfig,
    *,
    on_predicate_error: Callable[[Exception], None],
) -> bool:
    r"""Whether ``error`` (already unwrapped) is worth another attempt under ``policy``.

    A group with several leaves is retryable only if every leaf is. When the
    policy's ``is_retryable`` predicate raises an ``Exception``, it is reported
    through ``on_predicate_error`` and :func:`is_retryable_error`'s heuristics
    decide instead; ``BaseException``\ s from it propagate.
    """
    if isinstance(error, BaseExceptionGroup):
        return all(
            judge(leaf, policy, on_predicate_error=on_predicate_error) for leaf in leaves(error)
        )
    try:
        return is_retryable_error(error, policy)
    except Exception as exc:
        on_predicate_error(exc)
        return is_retryable_error(error, None)


def drop_frames(error: BaseException) -> BaseException:
    """Let ``error`` (and its causes, contexts and group members) keep no frames alive.

    A failed job's exception is kept for ``JobFailedError.__cause__``; its
    traceback would keep every frame's locals alive (a handler's 1 MB buffer per
    failed job). The traceback text is already in :class:`ErrorInfo`.
    """
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
    return error
