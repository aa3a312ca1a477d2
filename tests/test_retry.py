"""The retry toolkit: RetryConfig, compute_delay, is_retryable_error, with_retry, @retry."""

from __future__ import annotations

import functools
import inspect
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from trio_jobs import (
    JobTimeoutError,
    RetryConfig,
    RetryStrategy,
    compute_delay,
    is_retryable_error,
    retry,
    with_retry,
)


class Flaky:
    """An async callable that raises the given errors in turn, then returns "ok".

    It records the Trio time of each call, so backoff can be asserted exactly.
    """

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class HTTPError(Exception):
    """An error carrying arbitrary attributes, like an HTTP client's."""

    def __init__(self, message: str = "", **attributes: Any) -> None:
        super().__init__(message)
        for name, value in attributes.items():
            setattr(self, name, value)


NO_JITTER = RetryConfig(jitter=False)
Run = Callable[[Callable[[], Awaitable[Any]], "RetryConfig | None"], Awaitable[Any]]


@pytest.fixture(params=["with_retry", "decorator"])
def run_retrying(request: pytest.FixtureRequest) -> Run:
    """Run an async callable under a retry policy, through each public wrapper."""
    if request.param == "with_retry":

        async def run_with_retry(
            fn: Callable[[], Awaitable[Any]], config: RetryConfig | None
        ) -> Any:
            return await with_retry(fn, config=config)

        return run_with_retry

    async def run_decorated(fn: Callable[[], Awaitable[Any]], config: RetryConfig | None) -> Any:
        @retry(config)
        async def target() -> Any:
            return await fn()

        return await target()

    return run_decorated


async def a_real_cancelled() -> trio.Cancelled:
    """Return a genuine trio.Cancelled (it cannot be constructed directly)."""
    captured: list[trio.Cancelled] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as cancelled:
            captured.append(cancelled)
            raise
    return captured[0]


# --- RetryConfig -------------------------------------------------------------


def test_config_defaults_match_the_contract() -> None:
    config = RetryConfig()
    assert config.max_attempts == 3
    assert config.base_delay == 1.0
    assert config.max_delay == 60.0
    assert config.backoff_multiplier == 2.0
    assert config.jitter is True
    assert config.jitter_factor == 0.1
    assert config.strategy is RetryStrategy.EXPONENTIAL
    assert config.is_retryable is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -3),
        ("base_delay", -0.001),
        ("base_delay", math.nan),
        ("max_delay", -1.0),
        ("backoff_multiplier", 0.999),
        ("backoff_multiplier", 0),
        ("jitter_factor", -0.1),
        ("jitter_factor", 1.01),
        ("strategy", "sometimes"),
    ],
)
def test_config_rejects_out_of_range_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RetryConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 2.0),
        ("max_attempts", True),
        ("max_attempts", "3"),
        ("base_delay", "1"),
        ("max_delay", None),
        ("backoff_multiplier", False),
        ("jitter", 1),
        ("jitter_factor", "0.1"),
        ("is_retryable", "yes"),
    ],
)
def test_config_rejects_wrong_types_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=field):
        RetryConfig(**{field: value})


def test_config_accepts_the_boundaries() -> None:
    config = RetryConfig(
        max_attempts=1, base_delay=0, max_delay=0.0, backoff_multiplier=1, jitter_factor=0.0
    )
    assert config.max_attempts == 1
    assert RetryConfig(jitter_factor=1.0).jitter_factor == 1.0


def test_config_strategy_accepts_its_string_value() -> None:
    assert RetryConfig(strategy="linear").strategy is RetryStrategy.LINEAR  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = RetryConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_attempts = 5  # type: ignore[misc]


# --- compute_delay: the formulas ---------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RetryStrategy.IMMEDIATE, [0.0, 0.0, 0.0, 0.0]),
        (RetryStrategy.FIXED, [1.5, 1.5, 1.5, 1.5]),
        (RetryStrategy.LINEAR, [1.5, 3.0, 4.5, 6.0]),
        (RetryStrategy.EXPONENTIAL, [1.5, 4.5, 13.5, 40.5]),
    ],
)
def test_each_strategy_follows_its_formula(strategy: RetryStrategy, expected: list[float]) -> None:
    config = RetryConfig(
        strategy=strategy, base_delay=1.5, backoff_multiplier=3.0, max_delay=100.0, jitter=False
    )
    delays = [compute_delay(attempt, config) for attempt in (1, 2, 3, 4)]
    assert delays == expected
    assert all(type(delay) is float for delay in delays)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RetryStrategy.FIXED, [10.0, 10.0, 10.0]),
        (RetryStrategy.LINEAR, [3.0, 9.0, 10.0]),
        (RetryStrategy.EXPONENTIAL, [3.0, 10.0, 10.0]),
    ],
)
def test_delay_is_capped_at_max_delay(strategy: RetryStrategy, expected: list[float]) -> None:
    base = 20.0 if strategy is RetryStrategy.FIXED else 3.0
    config = RetryConfig(strategy=strategy, base_delay=base, max_delay=10.0, jitter=False)
    assert [compute_delay(attempt, config) for attempt in (1, 3, 5)] == expected


@pytest.mark.parametrize("strategy", [RetryStrategy.LINEAR, RetryStrategy.EXPONENTIAL])
@pytest.mark.parametrize("attempt", [10**7, 10**18, 10**400])
@pytest.mark.parametrize("multiplier", [1.000001, 2.0, math.inf])
def test_huge_attempt_numbers_do_not_overflow(
    strategy: RetryStrategy, attempt: int, multiplier: float
) -> None:
    config = RetryConfig(strategy=strategy, backoff_multiplier=multiplier, max_delay=30.0)
    assert compute_delay(attempt, attrs.evolve(config, jitter=False)) == 30.0
    assert 27.0 <= compute_delay(attempt, config, rng=random.Random(1)) <= 30.0


@pytest.mark.parametrize("strategy", [RetryStrategy.LINEAR, RetryStrategy.EXPONENTIAL])
def test_huge_attempt_without_a_cap_is_infinite_not_an_error(strategy: RetryStrategy) -> None:
    config = RetryConfig(strategy=strategy, max_delay=math.inf)
    assert compute_delay(10**400, config) == math.inf


def test_exponential_with_multiplier_one_stays_at_base() -> None:
    config = RetryConfig(backoff_multiplier=1.0, base_delay=2.5, jitter=False)
    assert [compute_delay(n, config) for n in (1, 2, 50, 10**400)] == [2.5] * 4


@pytest.mark.parametrize("strategy", list(RetryStrategy))
def test_zero_base_delay_means_no_wait(strategy: RetryStrategy) -> None:
    config = RetryConfig(strategy=strategy, base_delay=0.0)
    assert [compute_delay(n, config) for n in (1, 2, 10**400)] == [0.0, 0.0, 0.0]


# --- compute_delay: jitter ---------------------------------------------------


def test_jitter_is_uniform_within_the_factor_of_the_delay() -> None:
    config = RetryConfig(base_delay=2.0, jitter_factor=0.25)  # attempt 3: 8 +- 2
    rng = random.Random(2024)
    samples = [compute_delay(3, config, rng=rng) for _ in range(2_000)]
    assert all(6.0 <= delay <= 10.0 for delay in samples)
    assert min(samples) < 6.2
    assert max(samples) > 9.8


def test_jitter_draws_from_the_given_generator() -> None:
    config = RetryConfig(base_delay=2.0, jitter_factor=0.25)
    expected = 8.0 + random.Random(7).uniform(-2.0, 2.0)
    assert compute_delay(3, config, rng=random.Random(7)) == expected


def test_same_seed_gives_the_same_delays() -> None:
    first, second = random.Random(99), random.Random(99)
    assert [compute_delay(n, rng=first) for n in range(1, 9)] == [
        compute_delay(n, rng=second) for n in range(1, 9)
    ]


def test_cap_holds_after_jitter() -> None:
    config = RetryConfig(base_delay=1.0, max_delay=5.0, jitter_factor=0.5)
    rng = random.Random(5)
    samples = [compute_delay(10, config, rng=rng) for _ in range(1_000)]
    assert all(2.5 <= delay <= 5.0 for delay in samples)
    assert min(samples) < 3.0
    assert samples.count(5.0) > 300  # every upward move is clipped to the cap


def test_full_jitter_is_never_negative() -> None:
    config = RetryConfig(base_delay=4.0, jitter_factor=1.0, strategy=RetryStrategy.FIXED)
    rng = random.Random(11)
    samples = [compute_delay(1, config, rng=rng) for _ in range(2_000)]
    assert all(0.0 <= delay <= 8.0 for delay in samples)
    assert min(samples) < 0.1


class _UnusableRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        raise AssertionError("the generator must not be used")


@pytest.mark.parametrize(
    "config",
    [RetryConfig(jitter=False), RetryConfig(strategy=RetryStrategy.IMMEDIATE)],
    ids=["jitter-off", "zero-delay"],
)
def test_no_jitter_draws_nothing(config: RetryConfig) -> None:
    compute_delay(2, config, rng=_UnusableRandom())


def test_zero_jitter_factor_keeps_the_exact_delay() -> None:
    assert compute_delay(4, RetryConfig(jitter_factor=0.0), rng=random.Random(3)) == 8.0


def test_no_config_means_the_default_config() -> None:
    assert compute_delay(4, None, rng=random.Random(3)) == compute_delay(
        4, RetryConfig(), rng=random.Random(3)
    )
    assert all(0.9 <= compute_delay(1) <= 1.1 for _ in range(200))


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_below_one_is_a_value_error(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        compute_delay(attempt)


@pytest.mark.parametrize("attempt", [1.0, True, "1"])
def test_attempt_must_be_an_int(attempt: Any) -> None:
    with pytest.raises(TypeError, match="attempt"):
        compute_delay(attempt)


# --- is_retryable_error, in the contract's order ------------------------------


async def test_base_exceptions_are_never_retryable() -> None:
    asked: list[BaseException] = []

    def always(error: BaseException) -> bool:
        asked.append(error)
        return True

    cancelled = await a_real_cancelled()
    assert isinstance(cancelled, trio.Cancelled)
    for error in (cancelled, KeyboardInterrupt(), SystemExit(1), GeneratorExit()):
        assert is_retryable_error(error) is False
        assert is_retryable_error(error, RetryConfig(is_retryable=always)) is False
    assert asked == []


def test_config_predicate_decides_when_set() -> None:
    asked: list[BaseException] = []

    def only_key_errors(error: BaseException) -> bool:
        asked.append(error)
        return isinstance(error, KeyError)

    config = RetryConfig(is_retryable=only_key_errors)
    timeout, missing = TimeoutError("timed out"), KeyError("not found")
    assert is_retryable_error(timeout, config) is False
    assert is_retryable_error(missing, config) is True
    assert asked == [timeout, missing]


def test_config_without_predicate_uses_the_heuristics() -> None:
    assert is_retryable_error(ValueError("duplicate key"), RetryConfig()) is False
    assert is_retryable_error(ValueError("boom"), RetryConfig()) is True


@pytest.mark.parametrize(
    "message",
    [
        "Invalid input: age",
        "VALIDATION FAILED for field x",
        "401 Unauthorized",
        "Forbidden",
        "user 7 not found",
        "row Already Exists",
        "duplicate key value violates unique constraint",
    ],
)
def test_rule1_non_retryable_messages_are_not_retried(message: str) -> None:
    assert is_retryable_error(RuntimeError(message)) is False


def test_rule1_message_wins_over_the_later_rules() -> None:
    assert is_retryable_error(TimeoutError("record not found")) is False
    assert is_retryable_error(HTTPError("forbidden", is_retryable=True)) is False
    assert is_retryable_error(HTTPError("duplicate", status=503)) is False
    assert is_retryable_error(HTTPError("gateway says: invalid input")) is False


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(True, True), (False, False), (lambda: True, True), (lambda: False, False)],
    ids=["true", "false", "callable-true", "callable-false"],
)
def test_rule2_is_retryable_attribute_answers(flag: Any, expected: bool) -> None:
    assert is_retryable_error(HTTPError("boom", is_retryable=flag)) is expected


def test_rule2_attribute_wins_over_types_messages_and_status() -> None:
    class Permanent(TimeoutError):
        is_retryable = False

    assert is_retryable_error(Permanent("timed out")) is False
    assert is_retryable_error(HTTPError("rate limit", is_retryable=False)) is False
    assert is_retryable_error(HTTPError(status=503, is_retryable=False)) is False
    assert is_retryable_error(HTTPError(status=404, is_retryable=True)) is True


def test_rule2_attribute_of_another_type_is_ignored() -> None:
    assert is_retryable_error(HTTPError(status=404, is_retryable="yes")) is False
    assert is_retryable_error(HTTPError(status=503, is_retryable=None)) is True


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError(),
        JobTimeoutError("too slow"),
        trio.TooSlowError(),
        ConnectionError(),
        ConnectionResetError(),
        ConnectionRefusedError(),
        BrokenPipeError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_rule3_transient_types_are_retried(error: Exception) -> None:
    assert is_retryable_error(error) is True
    error.status = 400  # type: ignore[attr-defined]
    assert is_retryable_error(error) is True  # the type decides before the status


@pytest.mark.parametrize(
    "message",
    [
        "request Timeout",
        "read timed out",
        "read ECONNRESET",
        "connect econnrefused 127.0.0.1:5432",
        "getaddrinfo ENOTFOUND db",
        "Rate limit exceeded",
        "429 Too Many Requests",
        "503 Service Unavailable",
        "500 Internal Server Error",
        "502 Bad Gateway",
        "resource temporarily unavailable",
    ],
)
def test_rule3_transient_messages_are_retried(message: str) -> None:
    assert is_retryable_error(RuntimeError(message)) is True
    assert is_retryable_error(HTTPError(message, status=400)) is True


@pytest.mark.parametrize("attribute", ["status", "status_code"])
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (422, False),
        (499, False),
    ],
)
def test_rule4_http_status_decides(attribute: str, status: int, expected: bool) -> None:
    assert is_retryable_error(HTTPError("request failed", **{attribute: status})) is expected


@pytest.mark.parametrize("status", [200, 302, 600, "404", 404.0, True, None])
def test_rule4_only_integer_error_statuses_count(status: Any) -> None:
    assert is_retryable_error(HTTPError("request failed", status=status)) is True


def test_rule4_status_is_read_before_status_code() -> None:
    assert is_retryable_error(HTTPError(status=404, status_code=503)) is False
    assert is_retryable_error(HTTPError(status="n/a", status_code=404)) is False


@pytest.mark.parametrize(
    "error", [ValueError("boom"), RuntimeError(), Exception(), KeyError("k")], ids=repr
)
def test_rule5_anything_else_is_retried(error: Exception) -> None:
    assert is_retryable_error(error) is True


# --- with_retry and @retry: behaviour shared by both --------------------------


async def test_success_at_once_does_not_retry_or_sleep(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky()
    start = trio.current_time()
    assert await run_retrying(flaky, NO_JITTER) == "ok"
    assert flaky.calls == [start]
    assert trio.current_time() == start


async def test_exponential_backoff_is_timed_exactly(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(OSError("1"), OSError("2"), OSError("3"))
    start = trio.current_time()
    config = RetryConfig(max_attempts=4, base_delay=1.0, backoff_multiplier=2.0, jitter=False)
    assert await run_retrying(flaky, config) == "ok"
    assert [t - start for t in flaky.calls] == [0.0, 1.0, 3.0, 7.0]


async def test_linear_backoff_is_timed_exactly(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(OSError(), OSError(), OSError())
    start = trio.current_time()
    config = RetryConfig(
        max_attempts=4, base_delay=0.5, strategy=RetryStrategy.LINEAR, jitter=False
    )
    assert await run_retrying(flaky, config) == "ok"
    assert [t - start for t in flaky.calls] == [0.0, 0.5, 1.5, 3.0]


async def test_backoff_respects_max_delay(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(*[OSError()] * 4)
    start = trio.current_time()
    config = RetryConfig(max_attempts=5, base_delay=1.0, max_delay=3.0, jitter=False)
    assert await run_retrying(flaky, config) == "ok"
    assert [t - start for t in flaky.calls] == [0.0, 1.0, 3.0, 6.0, 9.0]


async def test_immediate_strategy_retries_without_waiting(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(OSError(), OSError())
    start = trio.current_time()
    config = RetryConfig(strategy=RetryStrategy.IMMEDIATE)
    assert await run_retrying(flaky, config) == "ok"
    assert flaky.calls == [start, start, start]


async def test_exhausted_attempts_reraise_the_same_exception_object(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    first, second, last = OSError("1"), OSError("2"), OSError("3")
    flaky = Flaky(first, second, last, OSError("never reached"))
    start = trio.current_time()
    with pytest.raises(OSError) as excinfo:
        await run_retrying(flaky, RetryConfig(max_attempts=3, jitter=False))
    assert excinfo.value is last
    assert [t - start for t in flaky.calls] == [0.0, 1.0, 3.0]
    assert trio.current_time() - start == 3.0  # no sleep after the last attempt


async def test_reraised_error_is_not_chained_to_earlier_attempts(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    last = OSError("3")
    with pytest.raises(OSError) as excinfo:
        await run_retrying(Flaky(OSError("1"), OSError("2"), last), NO_JITTER)
    assert excinfo.value is last
    assert last.__context__ is None
    assert last.__cause__ is None


async def test_non_retryable_error_is_raised_at_once(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    error = ValueError("user not found")
    flaky = Flaky(error)
    start = trio.current_time()
    with pytest.raises(ValueError, match="user not found") as excinfo:
        await run_retrying(flaky, NO_JITTER)
    assert excinfo.value is error
    assert flaky.calls == [start]
    assert trio.current_time() == start


async def test_max_attempts_one_never_retries(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(TimeoutError())
    with pytest.raises(TimeoutError):
        await run_retrying(flaky, RetryConfig(max_attempts=1))
    assert len(flaky.calls) == 1


async def test_config_predicate_chooses_what_is_retried(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    stop = TimeoutError("not this one")
    flaky = Flaky(KeyError("a"), KeyError("b"), stop)
    config = RetryConfig(max_attempts=10, is_retryable=lambda e: isinstance(e, KeyError))
    with pytest.raises(TimeoutError) as excinfo:
        await run_retrying(flaky, config)
    assert excinfo.value is stop
    assert len(flaky.calls) == 3


async def test_no_config_means_three_attempts_with_jittered_backoff(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(OSError(), OSError(), OSError())
    with pytest.raises(OSError):
        await run_retrying(flaky, None)
    assert len(flaky.calls) == 3
    first_wait, second_wait = (b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False))
    assert 0.9 <= first_wait <= 1.1
    assert 1.8 <= second_wait <= 2.2


async def test_cancellation_during_an_attempt_is_not_retried_or_swallowed(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await trio.sleep_forever()

    start = trio.current_time()
    with trio.move_on_after(5.0) as scope:
        await run_retrying(hang, RetryConfig(is_retryable=lambda e: True))
    assert scope.cancelled_caught
    assert calls == 1
    assert trio.current_time() - start == 5.0


async def test_cancellation_during_the_backoff_sleep_passes_through(
    run_retrying: Run, autojump_clock: trio.testing.MockClock
) -> None:
    flaky = Flaky(OSError())
    start = trio.current_time()
    with trio.move_on_after(4.0) as scope:
        await run_retrying(flaky, RetryConfig(base_delay=10.0, jitter=False))
    assert scope.cancelled_caught
    assert len(flaky.calls) == 1
    assert trio.current_time() - start == 4.0


@pytest.mark.parametrize(
    "make_error",
    [KeyboardInterrupt, lambda: SystemExit(3)],
    ids=["KeyboardInterrupt", "SystemExit"],
)
async def test_keyboard_interrupt_and_system_exit_pass_straight_through(
    run_retrying: Run,
    autojump_clock: trio.testing.MockClock,
    make_error: Callable[[], BaseException],
) -> None:
    asked: list[BaseException] = []

    def always(error: BaseException) -> bool:
        asked.append(error)
        return True

    error = make_error()
    flaky = Flaky(error)
    start = trio.current_time()
    with pytest.raises(type(error)) as excinfo:
        await run_retrying(flaky, RetryConfig(is_retryable=always))
    assert excinfo.value is error
    assert len(flaky.calls) == 1
    assert asked == []
    assert trio.current_time() == start


# --- with_retry only ----------------------------------------------------------


async def test_with_retry_passes_positional_arguments() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    assert await with_retry(add, 2, 3) == 5
    assert await with_retry(functools.partial(add, b=10), 1) == 11


async def test_on_retry_gets_attempt_delay_and_error_before_each_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, second = OSError("1"), OSError("2")
    flaky = Flaky(first, second)
    seen: list[tuple[int, float, BaseException, float]] = []
    start = trio.current_time()

    def on_retry(attempt: int, delay: float, error: BaseException) -> None:
        seen.append((attempt, delay, error, trio.current_time() - start))

    assert await with_retry(flaky, config=NO_JITTER, on_retry=on_retry) == "ok"
    assert seen == [(1, 1.0, first, 0.0), (2, 2.0, second, 1.0)]
    assert seen[0][2] is first
    assert seen[1][2] is second


async def test_on_retry_delay_is_the_jittered_wait_actually_slept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(OSError(), OSError())
    delays: list[float] = []
    config = RetryConfig(jitter_factor=0.5)
    await with_retry(flaky, config=config, on_retry=lambda a, d, e: delays.append(d))
    waits = [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert waits == pytest.approx(delays, abs=1e-9)
    assert 0.5 <= delays[0] <= 1.5
    assert 1.0 <= delays[1] <= 3.0


async def test_on_retry_is_not_called_when_nothing_is_left_to_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []
    with pytest.raises(OSError):
        await with_retry(
            Flaky(*[OSError()] * 5),
            config=RetryConfig(max_attempts=3),
            on_retry=lambda attempt, delay, error: seen.append(attempt),
        )
    assert seen == [1, 2]
    with pytest.raises(ValueError, match="invalid input"):
        await with_retry(
            Flaky(ValueError("invalid input")),
            on_retry=lambda attempt, delay, error: seen.append(attempt),
        )
    assert seen == [1, 2]


async def test_an_error_in_on_retry_ends_the_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(OSError(), OSError())

    def on_retry(attempt: int, delay: float, error: BaseException) -> None:
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        await with_retry(flaky, on_retry=on_retry)
    assert len(flaky.calls) == 1


async def test_with_retry_rejects_a_coroutine_object() -> None:
    async def work() -> None:
        pass

    coro = work()
    try:
        with pytest.raises(TypeError, match="async function"):
            await with_retry(coro)  # type: ignore[arg-type]
    finally:
        coro.close()


# --- @retry only ---------------------------------------------------------------


async def fetch(url: str, *, attempts: list[str]) -> str:
    """Fetch a URL (a docstring to keep)."""
    attempts.append(url)
    return url.upper()


def test_decorator_keeps_name_doc_and_signature() -> None:
    decorated = retry()(fetch)
    assert decorated.__name__ == "fetch"
    assert decorated.__qualname__ == "fetch"
    assert decorated.__doc__ == "Fetch a URL (a docstring to keep)."
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert inspect.signature(decorated) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(decorated)


async def test_decorated_function_passes_arguments_through() -> None:
    attempts: list[str] = []
    assert await retry()(fetch)("a", attempts=attempts) == "A"
    assert attempts == ["a"]


async def test_decorator_overrides_apply_on_top_of_the_defaults(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(OSError(), OSError(), OSError())

    @retry(max_attempts=4, base_delay=0.5, jitter=False)
    async def call() -> str:
        return await flaky()

    start = trio.current_time()
    assert await call() == "ok"
    assert [t - start for t in flaky.calls] == [0.0, 0.5, 1.5, 3.5]


async def test_decorator_overrides_apply_on_top_of_a_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(OSError(), OSError(), OSError())
    base = RetryConfig(max_attempts=5, base_delay=2.0, jitter=False)

    @retry(base, max_attempts=2)
    async def call() -> str:
        return await flaky()

    start = trio.current_time()
    with pytest.raises(OSError):
        await call()
    assert [t - start for t in flaky.calls] == [0.0, 2.0]


def test_unknown_override_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="max_attemps"):
        retry(max_attemps=3)  # type: ignore[call-arg]


def test_invalid_override_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="base_delay"):
        retry(base_delay=-1.0)


def test_config_must_be_a_retry_config() -> None:
    with pytest.raises(TypeError, match="RetryConfig"):
        retry({"max_attempts": 2})  # type: ignore[arg-type]


def test_bare_decorator_without_parentheses_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="RetryConfig"):
        retry(fetch)  # type: ignore[arg-type]


def test_decorating_a_sync_function_is_a_type_error() -> None:
    def sync() -> int:
        return 1

    with pytest.raises(TypeError, match="async"):
        retry()(sync)  # type: ignore[arg-type]


async def test_decorator_accepts_partials_and_async_callables(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[str] = []
    assert await retry()(functools.partial(fetch, attempts=attempts))("x") == "X"
    flaky = Flaky(OSError())
    assert await retry(jitter=False)(flaky)() == "ok"
    assert len(flaky.calls) == 2


async def test_each_call_gets_its_own_attempts(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(OSError(), OSError())

    @retry(max_attempts=2, jitter=False)
    async def call() -> str:
        return await flaky()

    with pytest.raises(OSError):
        await call()
    assert await call() == "ok"  # a fresh call starts again at attempt 1
    assert len(flaky.calls) == 3


class Client:
    """A class whose methods retry."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    @retry(max_attempts=3, jitter=False)
    async def get(self, key: str) -> str:
        """Get a key."""
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("reset")
        return f"{key}@{id(self)}"

    @classmethod
    @retry(jitter=False)
    async def build(cls, failures: int) -> Client:
        return cls(failures)

    @staticmethod
    @retry(jitter=False)
    async def ping(value: int) -> int:
        return value


async def test_decorator_works_on_methods(autojump_clock: trio.testing.MockClock) -> None:
    flaky_client, steady_client = Client(failures=2), Client(failures=0)
    start = trio.current_time()
    assert await flaky_client.get("k") == f"k@{id(flaky_client)}"
    assert flaky_client.calls == 3
    assert trio.current_time() - start == 3.0
    assert await steady_client.get("k") == f"k@{id(steady_client)}"
    assert steady_client.calls == 1
    assert Client.get.__name__ == "get"
    assert Client.get.__doc__ == "Get a key."
    assert list(inspect.signature(flaky_client.get).parameters) == ["key"]


async def test_decorator_works_on_classmethods_and_staticmethods() -> None:
    built = await Client.build(1)
    assert isinstance(built, Client)
    assert built.failures == 1
    assert await Client.ping(4) == 4
    assert await built.ping(5) == 5


async def test_methods_exhaust_per_instance(autojump_clock: trio.testing.MockClock) -> None:
    client = Client(failures=10)
    with pytest.raises(ConnectionError, match="reset"):
        await client.get("k")
    assert client.calls == 3
