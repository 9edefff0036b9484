"""Rate-limit accuracy: tokens a window admitted by the global LLM limit, against the limit.

Two caller processes (as two workers' steps would) loop over the step's own limiter calls
(rate_limits.acquire, a simulated provider call whose real usage is a fraction of the estimate,
then rate_limits.settle) against embedded (or configured) Redis, for a bounded number of windows
scaled down from 60 s. Achieved tokens a window are the real tokens of calls admitted after the
first window (the warm-up), divided by the windows measured; the median of rounds is printed with
its ratio to the limit (1.0 is exact; above 1 would be overshoot, below it unused capacity).
Usage: python -m bench.rate_limit_accuracy [--rounds 3] [--windows 5] [--window 1.0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from conveyor.cli.backing import backing_services
from conveyor.setting_values import LlmRateLimit
from conveyor.settings import Settings
from conveyor.steps import rate_limits
from conveyor.steps.base import CallEstimate, StepContext

LIMIT = 20_000  # tokens a window
ESTIMATE = 1_000  # each call's estimate (prompt bound + max_tokens)
REAL = 700  # what each call really used
CALL_SECONDS = 0.02  # the simulated provider's latency
CALLERS = 2
MAX_WINDOWS = 30


def caller(
    settings: Settings,
    model: str,
    stop_at: float,
    start: float,
    results: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """Call until stop_at; put the (admitted at, real tokens) of every call."""
    ctx = StepContext(
        run_id=uuid.uuid4(), user_id=uuid.uuid4(), step="call", attempt=1, settings=settings,
        deadline=stop_at + 60,
    )  # fmt: skip
    estimate = CallEstimate("bench", model, ESTIMATE - 1, 1, None)
    admitted: list[tuple[float, int]] = []
    while time.time() < stop_at:
        grant = rate_limits.acquire(ctx, estimate)
        admitted.append((time.time() - start, REAL))
        time.sleep(CALL_SECONDS)
        rate_limits.settle(ctx, grant, REAL)
    results.put(admitted)


def one_round(settings: Settings, windows: int, window: float) -> float:
    """Achieved tokens a window, after a warm-up window, over `windows` windows."""
    model = f"round-{uuid.uuid4().hex[:8]}"  # a fresh budget each round ("*": one per model)
    limited = settings.model_copy(
        update={"llm_rate_limits": {"*": LlmRateLimit(tokens_per_minute=LIMIT)}}
    )
    start = time.time()
    stop_at = start + window * (windows + 1)
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    processes = [
        multiprocessing.Process(target=caller, args=(limited, model, stop_at, start, results))
        for _ in range(CALLERS)
    ]
    for process in processes:
        process.start()
    calls = [call for _ in processes for call in results.get(timeout=window * windows + 60)]
    for process in processes:
        process.join(timeout=30)
    measured = [tokens for at, tokens in calls if window <= at < window * (windows + 1)]
    return sum(measured) / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds (production: 60)")
    args = parser.parse_args()
    windows = min(args.windows, MAX_WINDOWS)
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    base = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    with backing_services(base) as urls:
        settings = base.model_copy(
            update={
                "redis_url": urls.redis_url,
                "llm_rate_limit_window_seconds": args.window,
                "llm_rate_limit_max_wait_seconds": args.window * 2,
            }
        )
        achieved = [one_round(settings, windows, args.window) for _ in range(args.rounds)]
    median = statistics.median(achieved)
    print(
        f"rate-limit accuracy: {CALLERS} processes, limit {LIMIT} tokens per {args.window:g} s "
        f"window, estimate {ESTIMATE}, real {REAL}"
    )
    print(f"rounds (tokens/window): {', '.join(f'{value:.0f}' for value in achieved)}")
    print(f"median {median:.0f} tokens/window = {median / LIMIT:.3f} of the limit")


if __name__ == "__main__":
    main()
