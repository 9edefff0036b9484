"""Load: the HTTP API (submit + poll) and websockets together, beside a bare Flask + Celery
enqueue endpoint measured in the same run.

Both stacks run at once on the same embedded (or configured) Postgres and Redis, each as
production runs it: the web app under `conveyor run`'s gunicorn command and a prefork worker of
--concurrency processes; the baseline is bench/bare_app.py under the same gunicorn command.
Phases alternate (bare, then Conveyor) for --rounds rounds of --seconds each. In a phase,
--submitters threads submit as fast as answers come back (Conveyor: `POST /api/agents/invoke`
with the echo agent as one of --users users; bare: `POST /enqueue`), --pollers threads poll the
status of recent submissions, and, for Conveyor, --sockets websockets follow their user's runs
(`user:<id>` on /api/ws/workflows) from a separate process. Client, servers, workers, Redis and
Postgres all share this machine's cores, so throughput follows the CPU a submit costs in all of
them: each phase is metered (bench/cpu.py) from its start until its runs finished. Postgres and
Redis serve both stacks, so their figures include the idle stack's background polling and the
bench's own drain queries (small beside a loaded phase). Prints each phase, then medians
(throughput, latency, CPU per submit by part) and Conveyor ÷ bare, and the ceiling on that
ratio which Conveyor's Postgres CPU alone sets.
Usage: python -m bench.load [--seconds 15] [--rounds 3] [--submitters 8] [--pollers 4]
                            [--sockets 50] [--users 20] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import psycopg
import redis

from bench.cpu import CpuMeter
from bench.harness import process_env, stop_processes
from bench.load_clients import Phase, PhaseResult, Target, follow_sockets, run_phase
from bench.ws import wait_for_health
from conveyor.auth.tokens import mint_token
from conveyor.cli.backing import backing_services
from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import free_port
from conveyor.db import sql_connection
from conveyor.ops.migrations import migrate
from conveyor.settings import Settings

BENCH_SECRET = "l" * 40  # signs nothing that leaves the bench
MAX_SECONDS = 120
DRAIN_SECONDS = 60
WEB_WORKERS = 2  # `conveyor run`'s default
REPO = Path(__file__).resolve().parent.parent
FINAL_RUN_STATES = ("completed", "failed", "cancelled")
CPU_PARTS = ("web", "worker", "postgres", "redis", "client")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--submitters", type=int, default=8)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes per stack")
    args = parser.parse_args()
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    rounds = max(1, min(args.rounds, 10))
    users = [uuid.uuid4() for _ in range(max(1, min(args.users, 1000)))]

    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-load-"))
    base = Settings(_env_file=None, data_dir=data_dir, supabase_jwt_secret=BENCH_SECRET)  # type: ignore[call-arg]
    with backing_services(base) as urls:
        migrate(urls.database_url)
        give_unlimited_plan(urls.database_url, users)
        env = process_env(urls.database_url, urls.redis_url, BENCH_SECRET, data_dir)
        tokens = [mint_token(user, secret=BENCH_SECRET) for user in users]
        with ExitStack() as stack:
            bare_url, *bare_pids = stack.enter_context(
                serving("bench.bare_app:create_app()", "bench.bare_app", "bare", args, base, env)
            )
            conveyor_url, *conveyor_pids = stack.enter_context(
                serving("web:create_app()", "worker.app", "runs", args, base, env)
            )
            print(
                f"load: {args.submitters} submitters, {args.pollers} pollers, {seconds:g} s per "
                f"phase, {rounds} rounds; Conveyor also {args.sockets} websockets over "
                f"{len(users)} users; per stack: gunicorn {WEB_WORKERS} gthread workers, "
                f"a prefork worker of {args.concurrency}"
            )
            bare = Target.bare(bare_url)
            conveyor = Target.conveyor(conveyor_url, tokens)
            results: dict[str, list[PhaseResult]] = {"bare": [], "conveyor": []}
            watch_db = stack.enter_context(sql_connection(urls.database_url, autocommit=True))
            results_redis = stack.enter_context(redis.Redis.from_url(urls.redis_url))
            bare_cpu = CpuMeter.for_stack(*bare_pids, urls.database_url, results_redis)
            conveyor_cpu = CpuMeter.for_stack(*conveyor_pids, urls.database_url, results_redis)
            for index in range(rounds):
                phase = Phase(seconds, args.submitters, args.pollers)
                before = bare_cpu.read()
                bare_result = run_phase(bare, phase)
                bare_result.finished = drain(
                    lambda ids: sum(
                        value is not None
                        for value in results_redis.mget([f"celery-task-meta-{i}" for i in ids])
                    ),
                    bare_result.ids,
                )
                bare_result.cpu = bare_cpu.since(before)
                results["bare"].append(bare_result)
                print(f"round {index + 1} bare     {bare_result.summary()}")

                before = conveyor_cpu.read()
                conveyor_result = run_with_sockets(
                    conveyor, phase, conveyor_url, tokens[: args.sockets]
                )
                conveyor_result.finished = drain(
                    lambda ids: finished_runs(watch_db, ids), conveyor_result.ids
                )
                conveyor_result.cpu = conveyor_cpu.since(before)
                if conveyor_result.sockets:
                    conveyor_result.cpu["client"] += conveyor_result.sockets["cpu_seconds"]
                results["conveyor"].append(conveyor_result)
                print(f"round {index + 1} conveyor {conveyor_result.summary()}")
    report(results)


def give_unlimited_plan(database_url: str, users: list[uuid.UUID]) -> None:
    """A plan no bench load reaches, for every bench user: the bench measures throughput, not
    admission refusals (the echo agent costs no credits)."""
    with sql_connection(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into plans values "
            "('bench_load', 'Bench', 1e15, 1e15, 1000000000, 1000000000, 0)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "insert into user_accounts (user_id, plan_id) values (%s, 'bench_load')",
                [(user,) for user in users],
            )


@contextmanager
def serving(
    app: str,
    celery_app: str,
    queue: str,
    args: argparse.Namespace,
    base: Settings,
    env: dict[str, str],
) -> Iterator[tuple[str, int, int]]:
    """One stack: its web app under `conveyor run`'s gunicorn command and a prefork worker; its
    URL and the pids of the two."""
    port = free_port()
    command = shlex.split(
        gunicorn_command(
            sys.executable,
            host="127.0.0.1",
            port=port,
            workers=WEB_WORKERS,
            threads=base.web_threads,
        ).replace("'web:create_app()'", shlex.quote(app))
    )
    web = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", celery_app, "worker", "--pool", "prefork",
         "--concurrency", str(args.concurrency), "--queues", queue, "--loglevel", "WARNING",
         "--without-mingle", "--without-gossip"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base_url, web)
        yield base_url, web.pid, worker.pid
    finally:
        stop_processes(web, worker)


def run_with_sockets(target: Target, phase: Phase, base_url: str, tokens: list[str]) -> PhaseResult:
    """A Conveyor phase with websockets following the runs from their own process."""
    if not tokens:
        return run_phase(target, phase)
    ready = multiprocessing.Event()
    out: multiprocessing.Queue[dict[str, float]] = multiprocessing.Queue()
    ws_url = base_url.replace("http://", "ws://") + "/api/ws/workflows"
    sockets = multiprocessing.Process(
        target=follow_sockets, args=(ws_url, tokens, phase.seconds + 2, ready, out)
    )
    sockets.start()
    try:
        if not ready.wait(timeout=60):
            raise SystemExit("bench: the websockets did not connect in time")
        result = run_phase(target, phase)
        result.sockets = out.get(timeout=60)
    finally:
        sockets.join(timeout=30)
        if sockets.is_alive():
            sockets.kill()
    return result


def finished_runs(conn: psycopg.Connection[tuple[int]], ids: list[str]) -> int:
    """How many of the runs are in a final state."""
    row = conn.execute(
        "select count(*) from workflow_runs where id = any(%s::uuid[]) and status = any(%s)",
        (ids, list(FINAL_RUN_STATES)),
    ).fetchone()
    return int(row[0]) if row else 0


def drain(count_finished: Callable[[list[str]], int], ids: list[str]) -> int:
    """Wait (at most DRAIN_SECONDS) for every accepted submission to finish; how many did."""
    deadline = time.monotonic() + DRAIN_SECONDS
    finished = 0
    while time.monotonic() < deadline:
        finished = sum(count_finished(ids[i : i + 1000]) for i in range(0, len(ids), 1000))
        if finished >= len(ids):
            break
        time.sleep(0.5)
    return finished


def report(results: dict[str, list[PhaseResult]]) -> None:
    """Medians over rounds, side by side, with Conveyor ÷ bare."""
    med = statistics.median
    rows = [
        ("submits/s", lambda r: r.submit_rate(), "{:,.0f}"),
        ("submit p50 ms", lambda r: r.submit_percentile(50), "{:.1f}"),
        ("submit p99 ms", lambda r: r.submit_percentile(99), "{:.1f}"),
        ("polls/s", lambda r: r.poll_rate(), "{:,.0f}"),
        ("poll p50 ms", lambda r: r.poll_percentile(50), "{:.1f}"),
        ("poll p99 ms", lambda r: r.poll_percentile(99), "{:.1f}"),
        ("errors", lambda r: float(r.error_count()), "{:.0f}"),
        ("unfinished after drain", lambda r: float(len(r.ids) - r.finished), "{:.0f}"),
    ]
    # From the phase's start until its runs finished, per accepted submit (its run and polls
    # included); the client part includes the websocket followers' process.
    rows += [
        (f"CPU ms/submit: {part}", partial(PhaseResult.cpu_per_submit_ms, part=part), "{:.1f}")
        for part in CPU_PARTS
    ]
    rows.append(
        (
            "CPU ms/submit: total",
            lambda r: sum(r.cpu_per_submit_ms(part) for part in CPU_PARTS),
            "{:.1f}",
        )
    )
    print()
    print(f"medians over {len(results['bare'])} rounds")
    print(f"{'':26}{'bare Flask+Celery':>20}{'Conveyor':>12}{'ratio':>8}")
    for label, value, fmt in rows:
        bare = med(value(r) for r in results["bare"])
        conv = med(value(r) for r in results["conveyor"])
        # No ratio to a baseline that shows as zero (bare has no Postgres).
        shown = fmt.format(bare)
        ratio = f"{conv / bare:8.2f}" if float(shown.replace(",", "")) else f"{'':8}"
        print(f"{label:26}{shown:>20}{fmt.format(conv):>12}{ratio}")
    print_ceiling(results)
    socket_rows = [r.sockets for r in results["conveyor"] if r.sockets]
    if socket_rows:
        print(
            "websockets (Conveyor): "
            f"{med(s['received'] for s in socket_rows):,.0f} events received per phase, "
            f"event → socket p50 {med(s['p50_ms'] for s in socket_rows):.1f} ms, "
            f"p99 {med(s['p99_ms'] for s in socket_rows):.1f} ms, "
            f"{med(s['closed'] for s in socket_rows):.0f} sockets closed early"
        )


def print_ceiling(results: dict[str, list[PhaseResult]]) -> None:
    """The best ratio Conveyor's Postgres work alone allows: throughput on shared cores follows
    total CPU per submit, so even if Conveyor's web, worker, Redis and client cost exactly what
    bare's do, its Postgres CPU (the run's durable record, which bare does not keep) is added."""
    med = statistics.median
    bare = med(sum(r.cpu_per_submit_ms(part) for part in CPU_PARTS) for r in results["bare"])
    postgres = med(r.cpu_per_submit_ms("postgres") for r in results["conveyor"])
    if bare <= 0:
        return
    print(
        f"ceiling: bare's {bare:.1f} ms/submit plus Conveyor's Postgres {postgres:.1f} ms "
        f"allows at most {bare / (bare + postgres):.2f}x bare's submits/s; "
        f"0.70x leaves {bare / 0.7 - bare:.1f} ms/submit for everything Conveyor adds"
    )


if __name__ == "__main__":
    main()
