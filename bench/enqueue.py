"""Submit and execution cost of a Conveyor run beside a bare Celery task, measured in one run.

Submit: what `POST /api/agents/invoke` does after validation (insert the run and its first event,
publish the event, enqueue) versus a bare `send_task`. Execute: one worker process (solo pool)
draining N echo runs versus N no-op tasks. Prints medians over rounds and the ratios.
Usage: python bench/enqueue.py [--runs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import conveyor.workflows.builtin  # noqa: F401 - the echo agent
from bench.baseline_tasks import COUNTER_KEY
from bench.harness import (
    BARE_TASK,
    bench_environment,
    completed,
    rate,
    submit_runs,
    timed,
    timed_resume,
    wait_until,
    worker_pause,
)
from conveyor import workflows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = max(1, min(args.runs, 5000))
    echo = workflows.get_agent("echo")

    with bench_environment() as bench:
        client, celery, worker = bench.client, bench.celery, bench.worker

        def bare_count() -> int:
            return int(client.get(COUNTER_KEY) or 0)

        # Warm up both paths (connections, imports in the worker).
        celery.send_task(BARE_TASK, args=[bench.redis_url])
        wait_until(lambda: bare_count() == 1)

        publish_base, publish_conv, drain_base, drain_conv = [], [], [], []
        for _ in range(args.rounds):
            client.delete(COUNTER_KEY)
            publish_base.append(
                timed(
                    lambda: [celery.send_task(BARE_TASK, args=[bench.redis_url]) for _ in range(n)]
                )
            )
            wait_until(lambda: bare_count() >= n)

            run_ids: list[str] = []
            publish_conv.append(timed(lambda ids=run_ids: ids.extend(submit_runs(bench, echo, n))))
            wait_until(lambda ids=run_ids: completed(bench.watch, ids) == n)

            # Execution alone: enqueue first, then time the drain.
            client.delete(COUNTER_KEY)
            worker_pause(worker)
            for _ in range(n):
                celery.send_task(BARE_TASK, args=[bench.redis_url])
            drain_base.append(timed_resume(worker, lambda: bare_count() >= n))

            worker_pause(worker)
            drained = submit_runs(bench, echo, n)
            drain_conv.append(
                timed_resume(worker, lambda ids=drained: completed(bench.watch, ids) == n)
            )

    med = statistics.median
    print(f"n={n} per round, {args.rounds} rounds, medians; one solo worker process")
    print(f"{'':32}{'bare Celery':>14}{'Conveyor':>14}{'ratio':>8}")
    pb, pc = rate(n, med(publish_base)), rate(n, med(publish_conv))
    db_, dc = rate(n, med(drain_base)), rate(n, med(drain_conv))
    print(f"{'submit (per s)':32}{pb:14.0f}{pc:14.0f}{pc / pb:8.2f}")
    print(f"{'execute, 1 worker (per s)':32}{db_:14.0f}{dc:14.0f}{dc / db_:8.2f}")
    print(f"{'submit cost (ms each)':32}{1000 / pb:14.2f}{1000 / pc:14.2f}")
    print(f"{'execute cost (ms each)':32}{1000 / db_:14.2f}{1000 / dc:14.2f}")


if __name__ == "__main__":
    main()
