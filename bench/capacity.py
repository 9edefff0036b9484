"""The capacity model's inputs (docs/operations.md, "Capacity model"), measured in one run.

The bench starts its own embedded Postgres 16 and Redis, the web app under `conveyor run`'s
gunicorn command and a prefork worker on `runs`, each process type with its own
application_name (PGAPPNAME). Runs are submitted over HTTP as an API caller does
(`POST /api/agents/workflows/execute`, async) by --threads threads: bench/noop_workflow.py's
one-step and three-step no-op workflows, --runs of each, so what is counted is Conveyor's own
work. Each phase counts from its start until its runs completed and the servers went quiet:
- Postgres: statements per role from the server's statement log (pg_stat_statements is not in
  the embedded build, so the bench sets `log_statement = 'all'` on its own server), transactions
  (pg_stat_database.xact_commit; write commits from pg_waldump) and WAL bytes (pg_wal_lsn_diff);
- Redis: INFO commandstats deltas, and MONITOR to say which process sent what, for what
  (Celery's broker, run-event pub/sub, Conveyor's own keys).
Per step = (three-step - one-step) / 2; per run = one-step - per step. An idle phase first gives
the background rate, taken off the Redis figures (the workers' idle BRPOP polling). A last phase
has --sockets websockets following the submitting user's runs: the Redis and Postgres work per
delivered event. Then beat starts, and every process's Postgres and Redis connections are
counted (ss maps each socket to its process).
Usage: python -m bench.capacity [--runs 200] [--sockets 20] [--threads 4] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bench.capacity_phases import (
    REPO,
    Stack,
    batch,
    connection_census,
    followed,
    idle_for,
    measure,
    one,
)
from bench.capacity_probes import configure_server
from bench.capacity_report import Census, Phase, report
from bench.cpu import CpuMeter
from bench.harness import process_env, stop_processes
from bench.load import give_unlimited_plan
from bench.noop_workflow import NOOP1, NOOP3
from bench.ws import wait_for_health
from conveyor.auth.tokens import mint_token
from conveyor.cli.backing import ServiceURLs, backing_services
from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import free_port
from conveyor.db import sql_connection
from conveyor.ops.migrations import migrate
from conveyor.settings import Settings

BENCH_SECRET = "c" * 40  # signs nothing that leaves the bench
BENCH_APP = "capacity-bench"
MAX_RUNS = 2000
IDLE_SECONDS = 10
WARM_UP_RUNS = 10
WEB_WORKERS = 2  # `conveyor run`'s default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4, help="HTTP submitter threads")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    runs = max(10, min(args.runs, MAX_RUNS))
    sockets = max(1, min(args.sockets, 500))
    threads = max(1, min(args.threads, 32))
    concurrency = max(1, min(args.concurrency, 8))
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-capacity-"))
    # Always embedded: the bench changes its own server's logging settings.
    base = Settings(
        _env_file=None, data_dir=data_dir, supabase_jwt_secret=BENCH_SECRET,
        database_url=None, redis_url=None,
    )  # fmt: skip
    try:
        phases, census, setup = measure_all(base, runs, sockets, threads, concurrency)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)  # the servers' data: ~50 MB a run
    report(phases, census, setup)


def measure_all(
    base: Settings, runs: int, sockets: int, threads: int, concurrency: int
) -> tuple[list[Phase], Census, str]:
    """Start everything, run the phases and the census; the figures and a line on the setup."""
    with backing_services(base) as urls, running(urls, base, concurrency) as stack:
        phases = [measure(stack, "idle", lambda: idle_for(IDLE_SECONDS))]
        for name in (NOOP1.name, NOOP3.name):
            phases.append(
                measure(stack, name, lambda n=name: batch(stack, n, runs, threads))  # type: ignore[misc]
            )
        phases.append(
            measure(
                stack,
                f"{NOOP1.name} + {sockets} sockets",
                lambda: followed(stack, runs, sockets, threads),
            )
        )
        census = connection_census(stack)
        version = stack.watch.execute("select current_setting('server_version')").fetchone()
        setup = (
            f"Postgres {version[0] if version else '?'} and Redis "
            f"{stack.redis.info('server')['redis_version']} embedded; web: gunicorn "
            f"{WEB_WORKERS} gthread workers; worker: prefork {concurrency} on `runs`; "
            f"{threads} HTTP submitters; {runs} runs per phase"
        )
    return phases, census, setup


@contextmanager
def running(urls: ServiceURLs, base: Settings, concurrency: int) -> Iterator[Stack]:
    """Migrated services with statement logging, the web app and a worker, warmed up."""
    migrate(urls.database_url)
    user = uuid.uuid4()
    give_unlimited_plan(urls.database_url, [user])
    with sql_connection(urls.database_url, autocommit=True) as conn:
        # Workflow runs are charged credits (the echo agent bench/load.py submits is free).
        conn.execute("update user_accounts set credit_balance = 1e12 where user_id = %s", (user,))
    env = process_env(
        urls.database_url, urls.redis_url, BENCH_SECRET, base.data_dir,
        CONVEYOR_WORKFLOW_MODULES="bench.noop_workflow",
        BROKER_URL="",  # Redis is the broker, whatever this shell says: its commands are counted
    )  # fmt: skip
    port = free_port()
    command = gunicorn_command(
        sys.executable, host="127.0.0.1", port=port, workers=WEB_WORKERS, threads=base.web_threads
    )
    with (
        sql_connection(urls.database_url, autocommit=True, application_name=BENCH_APP) as watch,
        redis.Redis.from_url(urls.redis_url) as client,
    ):
        configure_server(watch)
        data = Path(str(one(watch, "select current_setting('data_directory')")))
        web = subprocess.Popen(
            shlex.split(command), env={**env, "PGAPPNAME": "web"}, cwd=REPO,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--queues", "runs", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            env={**env, "PGAPPNAME": "worker"}, cwd=REPO, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_for_health(base_url, web)
            stack = Stack(
                urls=urls,
                base_url=base_url,
                token=mint_token(user, secret=BENCH_SECRET),
                user=user,
                watch=watch,
                redis=client,
                log=data / "log",  # where pgserver points the server's stderr
                wal_dir=data / "pg_wal",
                roots={"web": web.pid, "worker": worker.pid},
                cpu=CpuMeter.for_stack(web.pid, worker.pid, urls.database_url, client),
                env=env,
            )
            for workflow in (NOOP1, NOOP3):  # imports, pools and prepared statements settle
                batch(stack, workflow.name, WARM_UP_RUNS, 2)
            yield stack
        finally:
            stop_processes(web, worker)


if __name__ == "__main__":
    main()
