"""Retry policy: the config, the backoff formula, the error heuristics, and the wrappers."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import attrs


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
        raise ValueError(f"strategy must be one of {[s.value for s in RetryStrategy]}, got {value!r}") from None


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


# --- placeholders: the retry toolkit's owner replaces everything below ----------
from typing import Any  # noqa: E402


def compute_delay(attempt: int, config: RetryConfig | None = None, *, rng: Any = None) -> float:
    """Placeholder."""
    raise NotImplementedError


def is_retryable_error(error: BaseException, config: RetryConfig | None = None) -> bool:
    """Placeholder."""
    raise NotImplementedError


async def with_retry(async_fn: Any, *args: Any, config: Any = None, on_retry: Any = None) -> Any:
    """Placeholder."""
    raise NotImplementedError


def retry(config: Any = None, /, **overrides: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
