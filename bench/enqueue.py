"""Submit and execution cost of a Conveyor run beside a bare Celery task, measured in one run.

Submit: what `POST /api/agents/invoke` does after validation (insert the run and its first event,
publish the event, enqueue) versus a bare `send_task`. Execute: one worker process (solo pool)
draining N echo runs versus N no-op tasks. Prints medians over rounds and the ratios.
Usage: python bench/enqueue.py [--runs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

from bench.baseline_tasks import COUNTER_KEY
from conveyor.cli import backing_services
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.events import EventPublisher
from conveyor.migrate import migrate
from conveyor.runs import create_run
from conveyor.settings import Settings
from worker.celery_app import create_celery

DRAIN_TIMEOUT_SECONDS = 120


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("bench: the worker did not drain within the time limit")
        time.sleep(0.02)  # coarse polling: the bench shares 2 cores with the worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = max(1, min(args.runs, 5000))

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
            LOG_LEVEL="WARNING",
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
             "--queues", "runs", "--include", "bench.baseline_tasks", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            # Warm up both paths (connections, imports in the worker).
            celery.send_task("runs.bench_noop", args=[urls.redis_url])
            wait_until(lambda: client.get(COUNTER_KEY) == b"1")

            publish_base, publish_conv, drain_base, drain_conv = [], [], [], []
            for _ in range(args.rounds):
                client.delete(COUNTER_KEY)
                publish_base.append(
                    timed(
                        lambda: [
                            celery.send_task("runs.bench_noop", args=[urls.redis_url])
                            for _ in range(n)
                        ]
                    )
                )
                wait_until(lambda: int(client.get(COUNTER_KEY) or 0) >= n)

                run_ids: list[str] = []

                def submit(run_ids: list[str] = run_ids) -> None:
                    for _ in range(n):
                        run = create_run(
                            db,
                            user_id=user,
                            kind="agent",
                            workflow_id="echo",
                            input={},
                            metadata={},
                            steps=[("echo", "python")],
                        )
                        assert run.event is not None
                        publisher.publish(run.event)
                        celery.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
                        run_ids.append(str(run.id))

                publish_conv.append(timed(submit))
                wait_until(lambda ids=run_ids: completed(watch, ids) == n)

                # Execution alone: enqueue first, then time the drain.
                client.delete(COUNTER_KEY)
                worker_pause(worker)
                for _ in range(n):
                    celery.send_task("runs.bench_noop", args=[urls.redis_url])
                drain_base.append(
                    timed_resume(worker, lambda: int(client.get(COUNTER_KEY) or 0) >= n)
                )

                drained: list[str] = []
                worker_pause(worker)
                submit(drained)
                drain_conv.append(
                    timed_resume(worker, lambda ids=drained: completed(watch, ids) == n)
                )
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            db.close()
            publisher.close()
            client.close()
            watch.close()

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    print(f"n={n} per round, {args.rounds} rounds, medians; one solo worker process")
    print(f"{'':32}{'bare Celery':>14}{'Conveyor':>14}{'ratio':>8}")
    pb, pc = rate(n, med(publish_base)), rate(n, med(publish_conv))
    db_, dc = rate(n, med(drain_base)), rate(n, med(drain_conv))
    print(f"{'submit (per s)':32}{pb:14.0f}{pc:14.0f}{pc / pb:8.2f}")
    print(f"{'execute, 1 worker (per s)':32}{db_:14.0f}{dc:14.0f}{dc / db_:8.2f}")
    print(f"{'submit cost (ms each)':32}{1000 / pb:14.2f}{1000 / pc:14.2f}")
    print(f"{'execute cost (ms each)':32}{1000 / db_:14.2f}{1000 / dc:14.2f}")


def completed(conn: psycopg.Connection[tuple[int]], run_ids: list[str]) -> int:
    row = conn.execute(
        "select count(*) from workflow_runs where id = any(%s::uuid[]) and status = 'completed'",
        (run_ids,),
    ).fetchone()
    return int(row[0]) if row else 0


def worker_pause(worker: subprocess.Popen[bytes]) -> None:
    """Freeze the worker so a whole batch is queued before the drain is timed."""
    worker.send_signal(signal.SIGSTOP)


def timed_resume(worker: subprocess.Popen[bytes], done: Callable[[], bool]) -> float:
    start = time.perf_counter()
    worker.send_signal(signal.SIGCONT)
    wait_until(done)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
