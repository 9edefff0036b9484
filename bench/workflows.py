"""Execution cost of a no-op workflow run (1 and 3 steps) beside a bare Celery task, in one run.

One worker process (solo pool, like bench/enqueue.py) drains N bare no-op tasks, N one-step no-op
runs and N three-step no-op runs each round; only the drain is timed (the batch is queued while
the worker is stopped). Per-step overhead = (time per 3-step run - time per 1-step run) / 2.
Prints per-round figures, then medians over rounds.
Usage: python -m bench.workflows [--runs 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from bench.baseline_tasks import COUNTER_KEY
from bench.harness import (
    BARE_TASK,
    bench_environment,
    completed,
    rate,
    submit_runs,
    timed_resume,
    wait_until,
    worker_pause,
)
from bench.noop_workflow import NOOP1, NOOP3
from conveyor.workflows.definitions import Workflow

MAX_RUNS = 2000  # every drain must finish within the harness's DRAIN_TIMEOUT_SECONDS
MAX_ROUNDS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = max(1, min(args.runs, MAX_RUNS))
    rounds = max(1, min(args.rounds, MAX_ROUNDS))

    with bench_environment(CONVEYOR_WORKFLOW_MODULES="bench.noop_workflow") as bench:

        def drain_runs(workflow: Workflow) -> float:
            worker_pause(bench.worker)
            ids = submit_runs(bench, workflow, n)
            return timed_resume(bench.worker, lambda: completed(bench.watch, ids) == n)

        def drain_bare() -> float:
            bench.client.delete(COUNTER_KEY)
            worker_pause(bench.worker)
            for _ in range(n):
                bench.celery.send_task(BARE_TASK, args=[bench.redis_url])
            return timed_resume(bench.worker, lambda: int(bench.client.get(COUNTER_KEY) or 0) >= n)

        # Warm up every path (connections, imports and the catalog in the worker).
        bench.client.delete(COUNTER_KEY)
        bench.celery.send_task(BARE_TASK, args=[bench.redis_url])
        wait_until(lambda: bench.client.get(COUNTER_KEY) == b"1")
        for workflow in (NOOP1, NOOP3):
            ids = submit_runs(bench, workflow, 1)
            wait_until(lambda ids=ids: completed(bench.watch, ids) == 1)

        bare, one, three = [], [], []
        for index in range(rounds):
            bare.append(drain_bare())
            one.append(drain_runs(NOOP1))
            three.append(drain_runs(NOOP3))
            print(
                f"round {index + 1}/{rounds}: bare {rate(n, bare[-1]):.0f} tasks/s, "
                f"1-step {rate(n, one[-1]):.0f} runs/s, "
                f"3-step {rate(n, three[-1]):.0f} runs/s, "
                f"per step {step_ms(n, one[-1], three[-1]):.2f} ms",
                flush=True,
            )

    med = statistics.median
    bare_rate, one_rate, three_rate = rate(n, med(bare)), rate(n, med(one)), rate(n, med(three))
    print()
    print(f"n={n} per round, {rounds} rounds, medians; one solo worker process, drain only")
    rows = [
        ("bare Celery no-op (tasks/s)", f"{bare_rate:.0f}"),
        ("Conveyor 1-step no-op (runs/s)", f"{one_rate:.0f}"),
        ("Conveyor 3-step no-op (runs/s)", f"{three_rate:.0f}"),
        ("per-step overhead (ms)", f"{step_ms(n, med(one), med(three)):.2f}"),
        ("3-step runs/s / bare tasks/s", f"{three_rate / bare_rate:.3f}"),
    ]
    for label, value in rows:
        print(f"{label:34}{value:>10}")


def step_ms(n: int, one_seconds: float, three_seconds: float) -> float:
    """What each extra step costs: (time per 3-step run - time per 1-step run) / 2, in ms."""
    return (three_seconds - one_seconds) / n / 2 * 1000


if __name__ == "__main__":
    main()
