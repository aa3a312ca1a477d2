"""Retry policy: the config, the backoff formula, the error heuristics, and the wrappers."""

from __future__ import annotations

import enum
import functools
import inspect
import math
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypedDict, TypeVar, TypeVarTuple, Unpack

import attrs
import trio

P = ParamSpec("P")
T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


class RetryStrategy(str, enum.Enum):
    """How the wait between attempts grows. See :func:`compute_delay` for the formulas."""

    IMMEDIATE = "immediate"
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"

    def __str__(self) -> str:
        return self.value


def _check_int_at_least_1(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


def _check_number(
    lower: float, upper: float = math.inf
) -> Callable[[object, attrs.Attribute[float], float], None]:
    def check(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{attribute.name} must be a number, got {value!r}")
        if math.isnan(value) or not lower <= value <= upper:
            raise ValueError(f"{attribute.name} must be in [{lower}, {upper}], got {value!r}")

    return check


def _check_bool(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {value!r}")


def _as_strategy(value: RetryStrategy | str) -> RetryStrategy:
    try:
        return RetryStrategy(value)
    except ValueError:
        raise ValueError(
            f"strategy must be one of {[s.value for s in RetryStrategy]}, got {value!r}"
        ) from None


def _check_callable(
    instance: object,
    attribute: attrs.Attribute[Callable[[BaseException], bool] | None],
    value: Callable[[BaseException], bool] | None,
) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{attribute.name} must be callable or None, got {value!r}")


@attrs.frozen
class RetryConfig:
    """How a job (or a function under :func:`with_retry`) is retried.

    Attributes:
        max_attempts: Total attempts, the first run included (``1`` never retries).
        base_delay: The first wait, in seconds, that the strategy grows from.
        max_delay: No wait is ever longer than this (seconds), jitter included.
        backoff_multiplier: The growth factor of ``EXPONENTIAL`` (at least 1).
        jitter: Whether to move each wait randomly by up to ``jitter_factor`` of it.
        jitter_factor: The jitter's relative size, from 0 to 1.
        strategy: How the wait grows; see :func:`compute_delay`.
        is_retryable: Decides which errors are retried; ``None`` uses
            :func:`is_retryable_error`'s heuristics.

    Raises:
        ValueError: a value is out of range; the message names the field.
        TypeError: a value has the wrong type; the message names the field.

    """

    max_attempts: int = attrs.field(default=3, validator=_check_int_at_least_1)
    base_delay: float = attrs.field(default=1.0, validator=_check_number(0.0))
    max_delay: float = attrs.field(default=60.0, validator=_check_number(0.0))
    backoff_multiplier: float = attrs.field(default=2.0, validator=_check_number(1.0))
    jitter: bool = attrs.field(default=True, validator=_check_bool)
    jitter_factor: float = attrs.field(default=0.1, validator=_check_number(0.0, 1.0))
    strategy: RetryStrategy = attrs.field(default=RetryStrategy.EXPONENTIAL, converter=_as_strategy)
    is_retryable: Callable[[BaseException], bool] | None = attrs.field(
        default=None, validator=_check_callable, eq=False
    )


# A constant, never mutated: what ``config=None`` means everywhere in this module.
_DEFAULT_CONFIG = RetryConfig()

_FIELD_NAMES = tuple(field.name for field in attrs.fields(RetryConfig))


class _RetryOverrides(TypedDict, total=False):
    """The keyword arguments of :func:`retry`: any :class:`RetryConfig` fields."""

    max_attempts: int
    base_delay: float
    max_delay: float
    backoff_multiplier: float
    jitter: bool
    jitter_factor: float
    strategy: RetryStrategy | str
    is_retryable: Callable[[BaseException], bool] | None


def config_with_overrides(
    config: RetryConfig | None, overrides: Mapping[str, Any], *, caller: str = "retry()"
) -> RetryConfig:
    """Return ``config`` (or the default config) with some fields replaced.

    Internal: shared by :func:`retry` and the runner's ``submit(retry={...})``.

    Raises:
        TypeError: ``config`` is not a RetryConfig, or an override names no field
            of RetryConfig (the message names it).
        ValueError: an override has a bad value (the message names the field).

    """
    if config is None:
        config = _DEFAULT_CONFIG
    elif not isinstance(config, RetryConfig):
        raise TypeError(f"{caller} takes a RetryConfig or None, got {config!r}")
    unknown = sorted(set(overrides).difference(_FIELD_NAMES))
    if unknown:
        raise TypeError(
            f"{caller} got unknown RetryConfig field(s) {', '.join(map(repr, unknown))}; "
            f"the fields are {', '.join(_FIELD_NAMES)}"
        )
    return attrs.evolve(config, **overrides) if overrides else config


def compute_delay(
    attempt: int, config: RetryConfig | None = None, *, rng: random.Random | None = None
) -> float:
    """Return how long to wait after failed attempt number ``attempt``.

    The strategy gives the raw wait, with ``n`` the failed attempt's number:

    - ``IMMEDIATE``: ``0``
    - ``FIXED``: ``base_delay``
    - ``LINEAR``: ``base_delay * n``
    - ``EXPONENTIAL``: ``base_delay * backoff_multiplier ** (n - 1)``

    The wait is then capped at ``max_delay``. With ``jitter``, it then moves by a
    uniformly random amount within ``±wait * jitter_factor``, so that many clients
    failing together do not retry in lockstep, and the result is clipped into
    ``[0, max_delay]``: the cap holds after jitter, so a wait at the cap only ever
    moves down. Huge attempt numbers do not overflow: the cap is applied before the
    power is computed.

    Args:
        attempt: The 1-based number of the attempt that just failed.
        config: The retry policy; ``None`` means ``RetryConfig()``.
        rng: The random generator for the jitter, for reproducible waits (for
            example ``random.Random(seed)``); ``None`` uses the :mod:`random`
            module's functions.

    Returns:
        The wait in seconds, between ``0`` and ``max_delay``.

    Raises:
        TypeError: ``attempt`` is not an int.
        ValueError: ``attempt`` is less than 1.

    """
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int, got {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt!r}")
    if config is None:
        config = _DEFAULT_CONFIG
    delay = _capped_delay(attempt, config)
    if config.jitter and 0.0 < delay < math.inf:
        spread = delay * config.jitter_factor
        delay += (random.uniform if rng is None else rng.uniform)(-spread, spread)
    # float(): ints are valid config values, and the result is documented as a float.
    return float(min(max(delay, 0.0), config.max_delay))


def _capped_delay(attempt: int, config: RetryConfig) -> float:
    base, cap, strategy = config.base_delay, config.max_delay, config.strategy
    if strategy is RetryStrategy.IMMEDIATE or base == 0.0:
        return 0.0
    if strategy is RetryStrategy.FIXED or base >= cap:
        # No strategy shrinks the wait, so a base at or past the cap stays there.
        return min(base, cap)
    # From here 0 < base < cap <= inf. Compare the step count with the count at
    # which the cap is reached *before* multiplying, so that a huge attempt number
    # never reaches float arithmetic (int -> float conversion overflows past 1e308).
    try:
        if strategy is RetryStrategy.LINEAR:
            if attempt > cap / base:
                return cap
            return min(base * attempt, cap)
        multiplier, steps = config.backoff_multiplier, attempt - 1
        if multiplier == 1.0:
            return base
        if cap < math.inf and steps > math.log(cap / base, multiplier):
            return cap
        return min(base * multiplier**steps, cap)
    except OverflowError:
        # Only reachable with max_delay=inf: there is no cap to hold.
        return math.inf


_NON_RETRYABLE_MESSAGE = re.compile(
    "invalid input|validation failed|unauthorized|forbidden|not found|already exists|duplicate",
    re.IGNORECASE,
)
_RETRYABLE_MESSAGE = re.compile(
    "timeout|timed out|econnreset|econnrefused|enotfound|rate limit|too many requests"
    "|service unavailable|internal server error|gateway|temporarily",
    re.IGNORECASE,
)
_RETRYABLE_TYPES = (TimeoutError, trio.TooSlowError, ConnectionError)


def is_retryable_error(error: BaseException, config: RetryConfig | None = None) -> bool:
    r"""Decide whether a failed attempt is worth another try.

    ``BaseException``\ s that are not ``Exception``\ s (:class:`trio.Cancelled`,
    :class:`KeyboardInterrupt`, :class:`SystemExit`) are never retryable: they are
    orders to stop, not failures. Otherwise ``config.is_retryable`` decides when it
    is set; without it, the first of these rules that applies answers:

    1. The message (``str(error)``) says the request itself is wrong — *invalid
       input*, *validation failed*, *unauthorized*, *forbidden*, *not found*,
       *already exists*, *duplicate* (case-insensitive): ``False``.
    2. The error has an ``is_retryable`` attribute, a bool or a zero-argument
       callable: its answer.
    3. It is a :class:`TimeoutError`, :class:`trio.TooSlowError` or
       :class:`ConnectionError`, or its message mentions a transient condition —
       *timeout*, *timed out*, *ECONNRESET*, *ECONNREFUSED*, *ENOTFOUND*, *rate
       limit*, *too many requests*, *service unavailable*, *internal server error*,
       *gateway*, *temporarily*: ``True``.
    4. It has an integer ``status`` or ``status_code`` attribute (an HTTP status):
       429 and 5xx are ``True``, other 4xx are ``False``.
    5. Anything else: ``True``.

    Args:
        error: The exception an attempt raised.
        config: The retry policy whose ``is_retryable`` to consult, if any.

    Returns:
        Whether to retry.

    """
    if not isinstance(error, Exception):
        return False
    if config is not None and config.is_retryable is not None:
        return bool(config.is_retryable(error))
    message = str(error)
    if _NON_RETRYABLE_MESSAGE.search(message):
        return False
    flag = getattr(error, "is_retryable", None)
    if isinstance(flag, bool):
        return flag
    if callable(flag):
        return bool(flag())
    if isinstance(error, _RETRYABLE_TYPES) or _RETRYABLE_MESSAGE.search(message):
        return True
    status = _http_status(error)
    if status is not None and 400 <= status < 600:
        return status == 429 or status >= 500
    return True


def _http_status(error: Exception) -> int | None:
    for name in ("status", "status_code"):
        value = getattr(error, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _delay_before_retry(
    attempt: int,
    error: Exception,
    config: RetryConfig,
    on_retry: Callable[[int, float, Exception], object] | None,
) -> float | None:
    """Return the wait before the next attempt, or None when ``error`` must propagate."""
    if attempt >= config.max_attempts or not is_retryable_error(error, config):
        return None
    delay = compute_delay(attempt, config)
    if on_retry is not None:
        on_retry(attempt, delay, error)
    return delay


async def with_retry(
    async_fn: Callable[[*PosArgsT], Awaitable[T]],
    *args: *PosArgsT,
    config: RetryConfig | None = None,
    on_retry: Callable[[int, float, Exception], object] | None = None,
) -> T:
    r"""Await ``async_fn(*args)``, retrying it with backoff until it returns.

    Each failed attempt whose error :func:`is_retryable_error` accepts is followed
    by ``await trio.sleep(compute_delay(attempt, config))`` and another attempt, up
    to ``config.max_attempts`` attempts in all. When the attempts run out, or an
    error is not retryable, that error propagates: the **same exception object**
    the last attempt raised, not a wrapper. :class:`trio.Cancelled` and the other
    ``BaseException``\ s pass straight through and are never retried, so a
    surrounding cancel scope or timeout (``trio.move_on_after``) bounds the whole
    retry loop, sleeps included.

    Pass keyword arguments with :func:`functools.partial`, as with Trio's
    ``start_soon``.

    Args:
        async_fn: The async function to call.
        *args: Positional arguments for ``async_fn``.
        config: The retry policy; ``None`` means ``RetryConfig()``.
        on_retry: Called as ``on_retry(attempt, delay, error)`` before each sleep,
            with the number of the attempt that just failed, the wait in seconds,
            and the error. An exception it raises propagates and ends the retries.

    Returns:
        What ``async_fn`` returned.

    Raises:
        Exception: The last attempt's error, when it is not retryable or no
            attempts are left.

    """
    if config is None:
        config = _DEFAULT_CONFIG
    attempt = 1
    while True:
        try:
            return await async_fn(*args)
        except Exception as error:
            if not callable(async_fn):
                raise TypeError(
                    f"with_retry() needs an async function and its arguments, got {async_fn!r}"
                ) from None
            delay = _delay_before_retry(attempt, error, config, on_retry)
            if delay is None:
                raise
        # Sleep outside the handler: the next attempt's error must not be chained to
        # this one, and a Cancelled raised by the sleep must not carry it either.
        await trio.sleep(delay)
        attempt += 1


def _is_async_callable(fn: object) -> bool:
    # async def functions, bound methods and partials of them; or instances of a
    # class with an ``async def __call__``.
    return inspect.iscoroutinefunction(fn) or (
        callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)
    )


def retry(
    config: RetryConfig | None = None, /, **overrides: Unpack[_RetryOverrides]
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Make an async function or method retry itself, as :func:`with_retry` does.

    ::

        @trio_jobs.retry(max_attempts=5, base_delay=0.5)
        async def fetch(url: str) -> bytes: ...

    The policy is ``config`` (default ``RetryConfig()``) with ``overrides``
    applied; it is resolved and validated once, when decorating, so a call that
    succeeds at once costs little more than the bare call. The decorated function
    keeps its ``__name__``, ``__doc__`` and signature (``__wrapped__``), for
    type checkers too. Works on methods, since the wrapper is a plain function.

    Args:
        config: The base retry policy; ``None`` means ``RetryConfig()``.
        **overrides: :class:`RetryConfig` fields to replace in it.

    Returns:
        A decorator for ``async def`` functions.

    Raises:
        TypeError: ``config`` is not a RetryConfig, an override names no
            RetryConfig field, or the decorated function is not an ``async def``.
        ValueError: an override has an invalid value.

    """
    resolved = config_with_overrides(config, overrides, caller="retry()")

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        if not _is_async_callable(fn):
            raise TypeError(f"retry() decorates async functions, and {fn!r} is not one")

        @functools.wraps(fn)
        async def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
            attempt = 1
            while True:
                try:
                    return await fn(*args, **kwargs)
                except Exception as error:
                    delay = _delay_before_retry(attempt, error, resolved, None)
                    if delay is None:
                        raise
                await trio.sleep(delay)
                attempt += 1

        return retrying

    return decorate
