"""Tutorial step 3: retries and backoff."""

from __future__ import annotations

import trio

from trio_jobs import (
    Job,
    JobContext,
    JobFailedError,
    JobRunner,
    RetryConfig,
    RetryStrategy,
    compute_delay,
    retry,
    with_retry,
)


class FlakyServiceError(Exception):
    """Stands for a network error that goes away if you try again."""


async def retrying_jobs() -> None:
    # Every job of this runner gets 4 attempts in all, waiting 1 s, 2 s, then 4 s
    # between them. Jitter is off here to make the timings printable; keep it on in
    # production, so that jobs that failed together do not retry in lockstep.
    policy = RetryConfig(
        max_attempts=4,
        base_delay=1.0,
        strategy=RetryStrategy.EXPONENTIAL,
        jitter=False,
    )
    print("planned waits:", [compute_delay(n, policy) for n in (1, 2, 3)])

    async with JobRunner(default_retry=policy) as runner:
        start = trio.current_time()

        @runner.handler("fetch")
        async def fetch(job: Job[str], ctx: JobContext[str]) -> str:
            print(f"  attempt {ctx.attempt} at t={trio.current_time() - start:.1f}s")
            if ctx.attempt < 3:
                raise FlakyServiceError("service unavailable")
            return f"got {job.payload}"

        @runner.handler("validate")
        async def validate(job: Job[str], ctx: JobContext[str]) -> None:
            print(f"  attempt {ctx.attempt} of validate")
            raise ValueError(f"validation failed: {job.payload!r} is not an email")

        def on_retrying(job: Job[str], attempt: int, delay: float) -> None:
            assert job.last_error is not None  # what the failed attempt raised
            print(f"  attempt {attempt} failed ({job.last_error.message}); next in {delay}s")

        runner.on("job:retrying", on_retrying)

        print("fetch:")
        handle = await runner.submit("fetch", "/users")
        print("  result:", await handle.wait())

        # A per-job policy: a mapping overrides fields of the runner's default.
        print("fetch with a fixed 0.5 s wait:")
        start = trio.current_time()
        handle = await runner.submit(
            "fetch", "/orders", retry={"strategy": RetryStrategy.FIXED, "base_delay": 0.5}
        )
        print("  result:", await handle.wait())

        # Errors whose message says the request itself is wrong are not retried
        # (see is_retryable_error); nor are errors your RetryConfig.is_retryable rejects.
        print("validate:")
        handle = await runner.submit("validate", "not-an-address")
        try:
            await handle.wait()
        except JobFailedError as exc:
            print("  failed:", exc.error_info.type, "-", exc.error_info.message)
            print("  the original exception is the cause:", repr(exc.__cause__))
        job = await handle.get_status()
        print("  status:", job.status, "after", job.attempts, "attempt(s)")


# The same retry toolkit works on any async function or method, without a runner.
class QuoteClient:
    def __init__(self) -> None:
        self.calls = 0

    @retry(max_attempts=3, base_delay=0.2, jitter=False)
    async def fetch(self, symbol: str) -> float:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("connection reset by peer")
        return 42.0


async def fetch_price(symbol: str) -> float:
    return 41.5


async def retrying_functions() -> None:
    client = QuoteClient()
    print("decorated method:", await client.fetch("TRIO"), "after", client.calls, "calls")
    price = await with_retry(
        fetch_price,
        "TRIO",
        config=RetryConfig(max_attempts=5),
        on_retry=lambda attempt, delay, error: print(f"retry {attempt} in {delay}s: {error}"),
    )
    print("with_retry:", price)


async def main() -> None:
    await retrying_jobs()
    await retrying_functions()


if __name__ == "__main__":
    trio.run(main)
