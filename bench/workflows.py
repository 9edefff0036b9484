"""Execution cost of a no-op workflow run (1 and 3 steps) beside a bare Celery task, in one run.

One worker process (solo pool, like bench/enqueue.py) drains N bare no-op tasks, N one-step no-op
runs and N three-step no-op runs each round; only the drain is timed (the batch is queued while
the worker is stopped). Per-step overhead = (time per 3-step run - time per 1-step run) / 2.
Prints per-round figures, then medians over rounds.
Usage: python -m bench.workflows [--runs 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import redis

from bench.baseline_tasks import COUNTER_KEY
from bench.enqueue import completed, rate, timed_resume, wait_until, worker_pause
from bench.noop_workflow import NOOP1, NOOP3
from conveyor.cli import backing_services
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.events import EventPublisher
from conveyor.migrate import migrate
from conveyor.runs import create_run
from conveyor.settings import Settings
from conveyor.workflows import Workflow
from worker.celery_app import create_celery

BARE_TASK = "runs.bench_noop"
MAX_RUNS = 2000  # every drain must finish within bench.enqueue's DRAIN_TIMEOUT_SECONDS
MAX_ROUNDS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = max(1, min(args.runs, MAX_RUNS))
    rounds = max(1, min(args.rounds, MAX_ROUNDS))

    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    base = Settings(_env_file=None, data_dir=data_dir, supabase_jwt_secret="b" * 40)  # type: ignore[call-arg]
    with backing_services(base) as urls:
        migrate(urls.database_url)
        settings = base.model_copy(
            update={"database_url": urls.database_url, "redis_url": urls.redis_url}
        )
        celery = create_celery(settings)
        db = Database(urls.database_url)
        publisher = EventPublisher(urls.redis_url)
        client = redis.Redis.from_url(urls.redis_url)
        watch = psycopg.connect(urls.database_url, autocommit=True)
        user = uuid.uuid4()

        env = dict(
            os.environ,
            DATABASE_URL=urls.database_url,
            REDIS_URL=urls.redis_url,
            SUPABASE_JWT_SECRET="b" * 40,
            CONVEYOR_DATA_DIR=str(data_dir),
            CONVEYOR_WORKFLOW_MODULES="bench.noop_workflow",
            LOG_LEVEL="WARNING",
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
             "--queues", "runs", "--include", "bench.baseline_tasks", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
        )  # fmt: skip

        def submit(workflow: Workflow, count: int) -> list[str]:
            """What a workflow submit does after validation: insert, publish the event, enqueue."""
            run_ids = []
            for _ in range(count):
                run = create_run(
                    db,
                    user_id=user,
                    kind="workflow",
                    workflow_id=workflow.name,
                    input={},
                    metadata={},
                    steps=workflow.step_rows(),
                )
                assert run.event is not None
                publisher.publish(run.event)
                celery.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
                run_ids.append(str(run.id))
            return run_ids

        def drain_runs(workflow: Workflow) -> float:
            worker_pause(worker)
            ids = submit(workflow, n)
            return timed_resume(worker, lambda: completed(watch, ids) == n)

        def drain_bare() -> float:
            client.delete(COUNTER_KEY)
            worker_pause(worker)
            for _ in range(n):
                celery.send_task(BARE_TASK, args=[urls.redis_url])
            return timed_resume(worker, lambda: int(client.get(COUNTER_KEY) or 0) >= n)

        try:
            # Warm up every path (connections, imports and the catalog in the worker).
            client.delete(COUNTER_KEY)
            celery.send_task(BARE_TASK, args=[urls.redis_url])
            wait_until(lambda: client.get(COUNTER_KEY) == b"1")
            for workflow in (NOOP1, NOOP3):
                ids = submit(workflow, 1)
                wait_until(lambda ids=ids: completed(watch, ids) == 1)

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
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            db.close()
            publisher.close()
            client.close()
            watch.close()

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
