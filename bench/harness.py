"""What every bench shares: embedded services, one solo worker process, submitting and timing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from celery import Celery

from conveyor.cli.backing import backing_services
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database, sql_connection
from conveyor.events.run_events import EventPublisher
from conveyor.ops.migrations import migrate
from conveyor.runs.store import create_run
from conveyor.settings import Settings
from conveyor.workflows.definitions import Workflow
from worker.celery_app import create_celery

DRAIN_TIMEOUT_SECONDS = 120
BARE_TASK = "runs.bench_noop"
BENCH_SECRET = "b" * 40  # signs nothing that leaves the bench


@dataclass
class Bench:
    """Connections to the bench's services and its worker process."""

    redis_url: str
    celery: Celery
    db: Database
    publisher: EventPublisher
    client: redis.Redis
    watch: psycopg.Connection[tuple[int]]
    worker: subprocess.Popen[bytes]
    user: uuid.UUID


@contextmanager
def bench_environment(**worker_env: str) -> Iterator[Bench]:
    """Embedded (or configured) Postgres and Redis, migrated, and a solo worker on `runs`."""
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    base = Settings(_env_file=None, data_dir=data_dir, supabase_jwt_secret=BENCH_SECRET)  # type: ignore[call-arg]
    with backing_services(base) as urls:
        migrate(urls.database_url)
        settings = base.model_copy(
            update={"database_url": urls.database_url, "redis_url": urls.redis_url}
        )
        env = process_env(urls.database_url, urls.redis_url, BENCH_SECRET, data_dir, **worker_env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo",
             "--queues", "runs", "--include", "bench.baseline_tasks", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env=env, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        bench = Bench(
            redis_url=urls.redis_url,
            celery=create_celery(settings),
            db=Database(urls.database_url),
            publisher=EventPublisher(urls.redis_url),
            client=redis.Redis.from_url(urls.redis_url),
            watch=sql_connection(urls.database_url, autocommit=True),
            worker=worker,
            user=uuid.uuid4(),
        )
        try:
            yield bench
        finally:
            worker.send_signal(signal.SIGCONT)  # a paused worker cannot terminate
            worker.terminate()
            worker.wait(timeout=30)
            bench.db.close()
            bench.publisher.close()
            bench.client.close()
            bench.watch.close()


def process_env(
    database_url: str, redis_url: str, secret: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment a bench's web or worker process runs with."""
    return dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SUPABASE_JWT_SECRET=secret,
        CONVEYOR_DATA_DIR=str(data_dir),
        LOG_LEVEL="WARNING",
        **extra,
    )


def stop_processes(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM all, then wait for each (SIGKILL after 30 s)."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def submit_runs(bench: Bench, definition: Workflow, count: int) -> list[str]:
    """What a submit does after validation: insert the run, publish its event, enqueue it."""
    run_ids = []
    for _ in range(count):
        run = create_run(
            bench.db,
            user_id=bench.user,
            kind=definition.kind,
            workflow_id=definition.name,
            input={},
            metadata={},
            steps=definition.step_rows(),
        )
        assert run.event is not None
        bench.publisher.publish(run.event)
        bench.celery.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
        run_ids.append(str(run.id))
    return run_ids


def rate(count: int, seconds: float) -> float:
    """Items per second."""
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    """Seconds fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_until(done: Callable[[], bool]) -> None:
    """Poll until done, or stop the bench after DRAIN_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("bench: the worker did not drain within the time limit")
        time.sleep(0.02)  # coarse polling: the bench shares 2 cores with the worker


def completed(conn: psycopg.Connection[tuple[int]], run_ids: list[str]) -> int:
    """How many of run_ids are completed."""
    row = conn.execute(
        "select count(*) from workflow_runs where id = any(%s::uuid[]) and status = 'completed'",
        (run_ids,),
    ).fetchone()
    return int(row[0]) if row else 0


def worker_pause(worker: subprocess.Popen[bytes]) -> None:
    """Freeze the worker so a whole batch is queued before the drain is timed."""
    worker.send_signal(signal.SIGSTOP)


def timed_resume(worker: subprocess.Popen[bytes], done: Callable[[], bool]) -> float:
    """Resume the worker and time until done."""
    start = time.perf_counter()
    worker.send_signal(signal.SIGCONT)
    wait_until(done)
    return time.perf_counter() - start
