"""How-to: test your handlers with pytest-trio and a virtual clock.

Each test here runs in a fraction of a millisecond of real time, however long the
backoffs and timeouts it checks: the ``autojump_clock`` fixture makes Trio's clock
jump ahead whenever every task is waiting.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from trio_jobs import (
    Job,
    JobContext,
    JobFailedError,
    JobRunner,
    JobStatus,
    JobTimeoutError,
    RetryConfig,
    RetryStrategy,
    is_retryable_error,
)

# -- the code under test (in your project, import it from your application) ------


class PaymentGatewayError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"the payment API answered HTTP {status_code}")
        self.status_code = status_code


class FakeGateway:
    """A test double: answers with the given HTTP statuses, in order, then 200."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls: list[float] = []

    async def charge(self, amount: int) -> str:
        self.calls.append(trio.current_time())
        await trio.sleep(0.2)  # network round trip
        if self.statuses:
            raise PaymentGatewayError(self.statuses.pop(0))
        return f"charged {amount}"


def charge_handler(gateway: FakeGateway) -> Any:
    async def charge(job: Job[dict[str, int]], ctx: JobContext[dict[str, int]]) -> str:
        return await gateway.charge(job.payload["amount"])

    return charge


# The policy under test: three attempts, 10 s then 20 s apart. Jitter off, so that
# the waits are exact; with jitter on, assert a range instead.
POLICY = RetryConfig(max_attempts=3, base_delay=10.0, jitter=False)


def runner_for(gateway: FakeGateway) -> JobRunner:
    runner = JobRunner(default_retry=POLICY, default_timeout=30.0)
    runner.register_handler("charge", charge_handler(gateway))
    return runner


# -- the tests ------------------------------------------------------------------------


async def test_a_transient_error_is_retried_after_the_backoff(autojump_clock: Any) -> None:
    gateway = FakeGateway(503, 503)  # fails twice, then succeeds
    async with runner_for(gateway) as runner:
        retries: list[tuple[int, float]] = []
        runner.on("job:retrying", lambda job, attempt, delay: retries.append((attempt, delay)))
        start = trio.current_time()
        handle = await runner.submit("charge", {"amount": 42})
        assert await handle.wait() == "charged 42"

    assert retries == [(1, 10.0), (2, 20.0)]
    # Times on the virtual clock: attempt, 0.2 s of work, backoff, attempt...
    assert [t - start for t in gateway.calls] == pytest.approx([0.0, 10.2, 30.4])
    job = await handle.get_status()
    assert job.status is JobStatus.COMPLETED
    assert job.attempts == 3


async def test_a_client_error_is_not_retried(autojump_clock: Any) -> None:
    gateway = FakeGateway(402)
    async with runner_for(gateway) as runner:
        handle = await runner.submit("charge", {"amount": 42})
        with pytest.raises(JobFailedError) as caught:
            await handle.wait()

    assert isinstance(caught.value.__cause__, PaymentGatewayError)
    assert caught.value.error_info.retryable is False
    assert len(gateway.calls) == 1


def test_which_errors_the_policy_retries() -> None:
    # The heuristics alone, without running anything.
    assert is_retryable_error(PaymentGatewayError(429), POLICY)
    assert is_retryable_error(PaymentGatewayError(502), POLICY)
    assert not is_retryable_error(PaymentGatewayError(404), POLICY)


async def test_a_hung_gateway_times_out_on_every_attempt(autojump_clock: Any) -> None:
    async def hang(job: Job[None], ctx: JobContext[None]) -> None:
        await trio.sleep_forever()

    policy = RetryConfig(max_attempts=2, base_delay=5.0, strategy=RetryStrategy.FIXED, jitter=False)
    async with JobRunner(default_retry=policy) as runner:
        runner.register_handler("hang", hang)
        start = trio.current_time()
        handle = await runner.submit("hang", timeout=30.0)
        with pytest.raises(JobTimeoutError):
            await handle.wait()
        # Two 30 s attempts and the 5 s wait between them: exactly 65 s.
        assert trio.current_time() - start == 65.0
