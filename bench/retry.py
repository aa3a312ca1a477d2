"""How much a retry wrapper adds to an async call that succeeds at once.

Run it as ``python bench/retry.py`` (or ``nox -s bench -- bench/retry.py``, which
also installs the peers: tenacity, stamina, backoff). Every variant awaits the same
trivial ``async def`` in a tight loop inside one ``trio.run``; each round measures
every variant once, in a rotating order, and the table shows medians over the
rounds. "added" is the variant's time per call minus the direct call's time in the
same round, so drift of the machine between rounds cancels out. Time is this
process's CPU time (``time.process_time``), so other processes competing for the
cores of a shared machine do not inflate the figures the way wall time would.

The target for trio_jobs is at most 0.5 µs added per call.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_jobs import RetryConfig, retry, with_retry

TARGET_ADDED_US = 0.5


async def succeed() -> int:
    return 1


Loop = Callable[[int], Awaitable[None]]


def call_loop(fn: Callable[[], Awaitable[Any]]) -> Loop:
    async def loop(n: int) -> None:
        for _ in range(n):
            await fn()

    return loop


def with_retry_loop(config: RetryConfig | None) -> Loop:
    async def loop(n: int) -> None:
        wrapper, fn = with_retry, succeed
        if config is None:
            for _ in range(n):
                await wrapper(fn)
        else:
            for _ in range(n):
                await wrapper(fn, config=config)

    return loop


def variants() -> dict[str, Loop]:
    found: dict[str, Loop] = {
        "direct await": call_loop(succeed),
        "trio_jobs.with_retry": with_retry_loop(None),
        "trio_jobs.with_retry(config=)": with_retry_loop(RetryConfig(max_attempts=5)),
        "trio_jobs @retry()": call_loop(retry()(succeed)),
    }
    if importlib.util.find_spec("tenacity"):
        import tenacity

        found["tenacity @retry"] = call_loop(
            tenacity.retry(
                stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_exponential(multiplier=1, max=60),
            )(succeed)
        )
    if importlib.util.find_spec("stamina"):
        import stamina

        found["stamina @retry"] = call_loop(stamina.retry(on=Exception, attempts=3)(succeed))
    if importlib.util.find_spec("backoff"):
        import backoff

        found["backoff @on_exception"] = call_loop(
            backoff.on_exception(backoff.expo, Exception, max_tries=3)(succeed)
        )
    return found


async def seconds_per_call(loop: Loop, n: int) -> float:
    gc.collect()
    gc.disable()  # as timeit does: a collection landing in one variant's loop is noise
    try:
        start = time.process_time()
        await loop(n)
        return (time.process_time() - start) / n
    finally:
        gc.enable()


async def calibrate(loop: Loop, target_seconds: float) -> int:
    n = 1_000
    while True:
        per_call = await seconds_per_call(loop, n)
        if per_call * n >= 0.02:
            return max(1_000, int(target_seconds / per_call))
        n *= 10


async def measure(
    loops: dict[str, Loop], rounds: int, target_seconds: float
) -> dict[str, list[float]]:
    sizes = {name: await calibrate(loop, target_seconds) for name, loop in loops.items()}
    names = list(loops)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(await seconds_per_call(loops[name], sizes[name]))
    return results


def report(results: dict[str, list[float]], rounds: int) -> bool:
    direct = results["direct await"]
    print(
        f"Python {platform.python_version()}, trio {trio.__version__}, "
        f"{rounds} rounds, medians of CPU time"
    )
    header = f"{'variant':<32}{'calls/s':>14}{'µs/call':>10}{'added µs/call':>16}"
    print(header)
    print("-" * len(header))
    within_target = True
    for name, per_call in results.items():
        added = statistics.median(v - d for v, d in zip(per_call, direct, strict=True)) * 1e6
        median = statistics.median(per_call)
        added_text = "—" if name == "direct await" else f"{added:+.3f}"
        print(f"{name:<32}{1 / median:>14,.0f}{median * 1e6:>10.3f}{added_text:>16}")
        if name.startswith("trio_jobs") and added > TARGET_ADDED_US:
            within_target = False
    verdict = "met" if within_target else "MISSED"
    print(f"\ntarget: trio_jobs adds <= {TARGET_ADDED_US} µs per call: {verdict}")
    return within_target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds (at least 7)")
    parser.add_argument(
        "--seconds", type=float, default=0.2, help="target seconds per variant per round"
    )
    args = parser.parse_args()
    rounds = max(7, args.rounds)
    results = trio.run(measure, variants(), rounds, args.seconds)
    report(results, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
