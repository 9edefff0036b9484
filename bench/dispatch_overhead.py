"""The dispatch overhead of concurrency keys: N one-step no-op runs submitted with a key and a
limit (held in Postgres, published by conveyor_dispatch_runs at submit and at each run's end)
beside the same N runs without (published at submit), in one run, on the same solo worker.

Each round, interleaved: one side's N runs are submitted as web/submit.py does after validation
(insert and publish; a held run is dispatched in its insert's transaction) and timed until all
are `completed`; runs/s is N over that time. Keyed runs are spread over --keys keys with
--limit each, so the limits never starve the single worker and the difference is the
dispatch's own cost (the held insert, the dispatch query at submit and in each keyed run's
finish_run).
Usage: python -m bench.dispatch_overhead [--runs 500] [--rounds 3] [--keys 4] [--limit 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from uuid import UUID

from bench.harness import Bench, bench_environment, completed, rate, wait_until
from bench.noop_workflow import NOOP1
from conveyor.constants import DISPATCH_WINDOW, TASK_EXECUTE_RUN
from conveyor.db import Connection
from conveyor.runs.dispatch import Hold, dispatch_in
from conveyor.runs.store import create_run

MAX_RUNS = 5000
MAX_ROUNDS = 10


def submit(bench: Bench, count: int, keys: int, limit: int) -> list[str]:
    """Store and publish count runs; with keys > 0, held on `keys` keys of `limit` each."""
    run_ids = []
    for index in range(count):
        hold = Hold(f"bench-{index % keys}", limit, None) if keys else None
        sent: list[UUID] = []
        run = create_run(
            bench.db,
            user_id=bench.user,
            kind=NOOP1.kind,
            workflow_id=NOOP1.name,
            input={},
            metadata={},
            steps=NOOP1.step_rows(),
            hold=hold,
            prepare=partial(dispatch_into, sent) if hold else None,
        )
        assert run.event is not None
        bench.publisher.publish(run.event)
        if hold is None:
            sent.append(run.id)
        for run_id in sent:
            bench.celery.send_task(TASK_EXECUTE_RUN, args=[str(run_id)])
        run_ids.append(str(run.id))
    return run_ids


def dispatch_into(sent: list[UUID], conn: Connection, _run: UUID) -> None:
    """In the submit's transaction, as web/submit.py's hold_run: the runs to publish."""
    sent.extend(dispatch_in(conn, DISPATCH_WINDOW))


def timed_side(bench: Bench, count: int, keys: int, limit: int) -> float:
    """Seconds from the first submit to the last run completed."""
    start = time.perf_counter()
    run_ids = submit(bench, count, keys, limit)
    wait_until(lambda: completed(bench.watch, run_ids) >= count)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--limit", type=int, default=4)
    args = parser.parse_args()
    n = max(1, min(args.runs, MAX_RUNS))
    rounds = max(1, min(args.rounds, MAX_ROUNDS))
    keys, limit = max(1, args.keys), max(1, args.limit)
    with bench_environment(CONVEYOR_WORKFLOW_MODULES="bench.noop_workflow") as bench:
        timed_side(bench, 20, 0, limit)  # warm up both paths
        timed_side(bench, 20, keys, limit)
        plain: list[float] = []
        keyed: list[float] = []
        for index in range(rounds):
            plain.append(rate(n, timed_side(bench, n, 0, limit)))
            keyed.append(rate(n, timed_side(bench, n, keys, limit)))
            print(
                f"round {index + 1}/{rounds}: without {plain[-1]:.1f} runs/s, "
                f"keyed {keyed[-1]:.1f} runs/s",
                flush=True,
            )
    plain_m, keyed_m = statistics.median(plain), statistics.median(keyed)
    print()
    print(f"n={n} one-step no-op runs, {rounds} rounds interleaved, medians; one solo worker")
    print(f"{'without key (runs/s)':42}{plain_m:>10.1f}")
    print(f"{f'{keys} keys, limit {limit} (runs/s)':42}{keyed_m:>10.1f}")
    print(f"{'keyed / without':42}{keyed_m / plain_m:>10.2f}  (target >= 0.90)")
    # The absolute cost: what a key adds to each run, whatever the run itself costs.
    print(f"{'ms more per keyed run':42}{1000 / keyed_m - 1000 / plain_m:>10.2f}")


if __name__ == "__main__":
    main()
