"""Typed examples of the retry toolkit, checked by ``mypy --strict`` (never run by pytest).

``assert_type`` proves that ``@retry`` keeps the decorated signature and that
``with_retry`` returns what the wrapped function returns. The ``type: ignore``
lines prove that wrong calls are errors: with ``warn_unused_ignores`` (part of
``--strict``), an ignore that suppresses nothing is itself an error.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Coroutine
from typing import Any, assert_type

import trio

from trio_jobs import (
    RetryConfig,
    RetryStrategy,
    compute_delay,
    is_retryable_error,
    retry,
    with_retry,
)


@retry(max_attempts=5, base_delay=0.5, strategy=RetryStrategy.LINEAR)
async def fetch(url: str, *, encoding: str = "utf-8") -> bytes:
    return url.encode(encoding)


@retry(RetryConfig(max_attempts=2))
async def count(items: list[int]) -> int:
    return len(items)


class Client:
    @retry(jitter=False)
    async def get(self, key: str) -> dict[str, int]:
        return {key: 1}


async def add(a: int, b: int) -> int:
    return a + b


def log_retry(attempt: int, delay: float, error: BaseException) -> None:
    print(f"attempt {attempt} failed with {error!r}; retrying in {delay:.2f}s")


async def main() -> None:
    pending = fetch("https://example.org")
    _ = assert_type(pending, Coroutine[Any, Any, bytes])
    pending.close()
    assert_type(await fetch("https://example.org", encoding="ascii"), bytes)
    assert_type(await count([1, 2]), int)
    assert_type(await Client().get("k"), dict[str, int])

    assert_type(await with_retry(add, 1, 2), int)
    assert_type(await with_retry(add, 1, 2, config=RetryConfig(), on_retry=log_retry), int)
    assert_type(await with_retry(functools.partial(add, b=2), 1), int)

    assert_type(compute_delay(3), float)
    assert_type(compute_delay(3, RetryConfig(jitter=False), rng=random.Random(1)), float)
    assert_type(is_retryable_error(trio.TooSlowError()), bool)


async def wrong_calls_are_type_errors() -> None:
    await fetch(42)  # type: ignore[arg-type]
    await fetch("u", encoding=b"ascii")  # type: ignore[arg-type]
    await fetch("u", retries=3)  # type: ignore[call-arg]
    await with_retry(add, 1, "2")  # type: ignore[arg-type]
    retry(max_attempt=3)  # type: ignore[call-arg]
    retry(base_delay="1")  # type: ignore[arg-type]
