"""The phases of bench/capacity.py: what the bench holds while it runs, a phase measured between
two samples of every counter (MONITOR on throughout), the submits and websockets of a phase, and
the connection census. Every wait is bounded."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from bench.capacity_clients import follow_user, submit_http
from bench.capacity_probes import (
    RedisMonitor,
    postgres_clients,
    redis_clients,
    tally_statements,
    tcp_owners,
    wal_stats,
)
from bench.capacity_report import Census, Phase
from bench.cpu import CpuMeter
from bench.harness import stop_processes
from bench.noop_workflow import NOOP1
from conveyor.cli.backing import ServiceURLs

DRAIN_SECONDS = 300
SETTLE_SECONDS = 11  # idle backends report their statistics within 10 s (PGSTAT_IDLE_INTERVAL)
BEAT_SECONDS = 8  # beat takes its lock and ticks in this time
REPO = Path(__file__).resolve().parent.parent
IGNORED_COMMANDS = ("cmdstat_info", "cmdstat_client|list", "cmdstat_monitor")  # the bench's


@dataclass
class Stack:
    """The running processes and the bench's handles on the servers."""

    urls: ServiceURLs
    base_url: str
    token: str
    user: uuid.UUID
    watch: psycopg.Connection[tuple[int]]
    redis: redis.Redis
    log: Path
    wal_dir: Path
    roots: dict[str, int]  # role -> pid of its process tree
    cpu: CpuMeter
    env: dict[str, str]


@dataclass
class Sample:
    """What the servers have counted so far."""

    at: float
    log_offset: int
    lsn: str
    xact_commit: int
    commands: Counter[str]
    cpu: dict[str, float]
    stored: tuple[int, int]  # bytes of Conveyor's tables with their indexes: run_events, the rest


STORED_BYTES = (
    "select coalesce(sum(pg_total_relation_size(c.oid)) filter (where c.relname = 'run_events'), 0)"
    ", coalesce(sum(pg_total_relation_size(c.oid)) filter (where c.relname <> 'run_events'), 0) "
    "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
    "where n.nspname = 'conveyor' and c.relkind in ('r', 'p', 'm')"
)


def one(conn: psycopg.Connection[tuple[int]], query: str) -> object:
    """The single value a query returns."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def sample(stack: Stack) -> Sample:
    """Read every counter the phases compare."""
    stats = stack.redis.info("commandstats")
    return Sample(
        at=time.monotonic(),
        log_offset=stack.log.stat().st_size,
        lsn=str(one(stack.watch, "select pg_current_wal_flush_lsn()")),
        xact_commit=int(
            str(
                one(
                    stack.watch,
                    "select xact_commit from pg_stat_database where datname = current_database()",
                )
            )
        ),
        commands=Counter({name: int(value["calls"]) for name, value in stats.items()}),
        cpu=stack.cpu.read(),
        stored=stored_bytes(stack.watch),
    )


def stored_bytes(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Bytes on disk of run_events, and of Conveyor's other tables, indexes included."""
    row = conn.execute(STORED_BYTES).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def measure(stack: Stack, name: str, action: Callable[[], tuple[int, int]]) -> Phase:
    """Run one phase between two samples, with MONITOR on; SETTLE_SECONDS of quiet at its end
    let acknowledgements land and every backend report its statistics."""
    before = sample(stack)
    with RedisMonitor(stack.urls.redis_url) as monitor:
        started = time.monotonic()
        runs, delivered = action()
        busy = time.monotonic() - started
        busy_cpu = stack.cpu.read()  # before the quiet end: idle processes still use some
        time.sleep(SETTLE_SECONDS)
        owners = tcp_owners()
    after = sample(stack)
    role_of = process_roles(stack.roots)
    by_role: Counter[tuple[str, str, str]] = Counter()
    for (address, command, purpose), count in monitor.seen.items():
        # Commands a Lua script issues show as from "lua": the rate limiter's, say.
        role = "script" if address == "lua" else role_of.get(owners.get(address, 0), "other")
        by_role[(role, command, purpose)] += count
    wal_bytes = int(
        str(one(stack.watch, f"select pg_wal_lsn_diff('{after.lsn}', '{before.lsn}')::bigint"))
    )
    commands = after.commands - before.commands
    for ignored in IGNORED_COMMANDS:
        commands.pop(ignored, None)
    return Phase(
        name=name,
        runs=runs,
        seconds=after.at - before.at,
        busy_seconds=busy,
        statements=tally_statements(stack.log, before.log_offset, after.log_offset),
        wal=wal_stats(stack.wal_dir, before.lsn, after.lsn, wal_bytes),
        xact_commit=after.xact_commit - before.xact_commit,
        commands=commands,
        by_role=by_role,
        cpu={part: busy_cpu[part] - before.cpu[part] for part in busy_cpu},
        stored=(after.stored[0] - before.stored[0], after.stored[1] - before.stored[1]),
        delivered=delivered,
        channels=monitor.channels,
    )


def process_roles(roots: dict[str, int]) -> dict[int, str]:
    """pid -> role for every process of each role's tree, and this bench's own."""
    roles = {psutil.Process().pid: "bench"}
    for role, pid in roots.items():
        try:
            root = psutil.Process(pid)
            roles.update({p.pid: role for p in [root, *root.children(recursive=True)]})
        except psutil.Error:
            continue  # gone: its connections are gone too
    return roles


def idle_for(seconds: float) -> tuple[int, int]:
    """Nothing submitted: the background rate."""
    time.sleep(seconds)
    return 0, 0


def batch(stack: Stack, workflow: str, count: int, threads: int) -> tuple[int, int]:
    """Submit count runs over HTTP and wait until every one completed."""
    ids = submit_http(stack.base_url, stack.token, workflow, count, threads)
    deadline = time.monotonic() + DRAIN_SECONDS
    query = "select count(*) from workflow_runs where id = any(%s::uuid[]) and status = 'completed'"
    while True:
        row = stack.watch.execute(query, (ids,)).fetchone()
        if row and int(row[0]) >= count:
            return count, 0
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {workflow} runs did not complete in {DRAIN_SECONDS} s")
        time.sleep(0.25)  # coarse: each poll is a logged statement of the bench's


def followed(stack: Stack, count: int, sockets: int, threads: int) -> tuple[int, int]:
    """A batch of one-step runs while `sockets` websockets follow their user; (runs, events
    the sockets received)."""
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    ws_url = stack.base_url.replace("http://", "ws://") + "/api/ws/workflows"
    follower = context.Process(
        target=follow_user,
        args=(ws_url, stack.token, str(stack.user), sockets, DRAIN_SECONDS, ready, stop, out),
    )
    follower.start()
    try:
        if not ready.wait(timeout=60):
            raise SystemExit("bench: the websockets did not subscribe in time")
        runs, _ = batch(stack, NOOP1.name, count, threads)
        time.sleep(2)  # the last status updates reach the sockets
        stop.set()
        tally = out.get(timeout=30)
    finally:
        stop.set()
        follower.join(timeout=30)
        if follower.is_alive():
            follower.kill()
    if tally["closed"]:
        print(f"warning: {tally['closed']} sockets closed early", flush=True)
    return runs, int(tally["received"])


def connection_census(stack: Stack) -> Census:
    """Start beat, let it tick, then count each process's Postgres and Redis connections."""
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "WARNING"],
        env={**stack.env, "PGAPPNAME": "beat", "PYTHONPATH": str(REPO)},
        cwd=stack.env["CONVEYOR_DATA_DIR"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(BEAT_SECONDS)
        roots = {**stack.roots, "beat": beat.pid}
        roles = process_roles(roots)
        postgres = Counter(pid for pid, _app in postgres_clients(stack.watch))
        owners = tcp_owners()
        clients = redis_clients(stack.redis)
        redis_by_pid = Counter(owners.get(addr, 0) for addr, _ in clients)
        subscribers = Counter(roles.get(owners.get(addr, 0), "other") for addr, p in clients if p)
        return Census(
            pattern_subscribers=dict(subscribers),
            rows=[
                (role, pid, postgres[pid], redis_by_pid[pid])
                for pid, role in sorted(roles.items(), key=lambda item: (item[1], item[0]))
                if role != "bench"
            ],
            unmapped_postgres=sum(n for pid, n in postgres.items() if pid not in roles),
            unmapped_redis=sum(n for pid, n in redis_by_pid.items() if pid not in roles),
        )
    finally:
        stop_processes(beat)
