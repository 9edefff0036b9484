"""Websocket fan-out: publish→receive latency and lost messages for many concurrent sockets.

The web process is the production one (`conveyor run`'s gunicorn gthread command) on embedded
(or configured) Postgres and Redis. S sockets (asyncio `websockets` client, one process) each
subscribe to one of R runs' topics; a publisher process then publishes run events (seq in order,
the send time inside) on Redis at P per second for T seconds, as the worker's EventPublisher does.
Every socket should receive every event of its run: latency is receive time minus send time
(one clock: all on this machine), lost is expected minus received. Client, server, Redis and
Postgres share this machine's cores. Prints the server settings, then the figures.
Usage: python -m bench.ws [--sockets 1000] [--runs 100] [--rate 400] [--seconds 10]
                          [--workers 2] [--threads 1100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
from websockets.asyncio.client import connect

from bench.harness import process_env
from conveyor.auth.tokens import mint_token
from conveyor.cli.backing import backing_services
from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import free_port
from conveyor.constants import run_topic, topic_channel
from conveyor.db import Database
from conveyor.ops.migrations import migrate
from conveyor.runs.store import create_run
from conveyor.settings import Settings

BENCH_SECRET = "w" * 40  # signs nothing that leaves the bench
MAX_SOCKETS = 5_000
MAX_SECONDS = 120
CONNECT_SECONDS = 120
DRAIN_SECONDS = 10
STARTUP_SECONDS = 60
CONNECTING_AT_ONCE = 50
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rate", type=int, default=400, help="events published per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: WEB_THREADS")
    args = parser.parse_args()
    sockets = max(1, min(args.sockets, MAX_SOCKETS))
    runs = max(1, min(args.runs, sockets))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    rate = max(1, min(args.rate, 20_000))

    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-ws-"))
    base = Settings(_env_file=None, data_dir=data_dir, supabase_jwt_secret=BENCH_SECRET)  # type: ignore[call-arg]
    threads = args.threads or base.web_threads
    with backing_services(base) as urls:
        migrate(urls.database_url)
        user = uuid.uuid4()
        run_ids = create_runs(urls.database_url, user, runs)
        port = free_port()
        command = gunicorn_command(
            sys.executable, host="127.0.0.1", port=port, workers=args.workers, threads=threads
        )
        print("server:", command.split("-m ", 1)[1])
        print(
            f"  WS_QUEUE_SIZE={base.ws_queue_size} WS_PING_SECONDS={base.ws_ping_seconds} "
            f"WS_COMPRESSION={base.ws_compression} "
            f"(one Redis subscriber thread per worker; one thread per socket)"
        )
        print(
            f"load: {sockets} sockets on {runs} runs ({sockets // runs} per run), "
            f"{rate} events/s for {seconds:g} s = {rate * sockets // runs} deliveries/s"
        )
        env = process_env(urls.database_url, urls.redis_url, BENCH_SECRET, data_dir)
        server = subprocess.Popen(shlex.split(command), env=env, cwd=REPO)
        try:
            wait_for_health(f"http://127.0.0.1:{port}", server)
            token = mint_token(user, secret=BENCH_SECRET)
            url = f"ws://127.0.0.1:{port}/api/ws/workflows?token={token}"
            result = asyncio.run(
                measure(
                    url, urls.redis_url, run_ids, sockets, rate=rate, seconds=seconds,
                    server_pid=server.pid,
                )
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(result)


def create_runs(database_url: str, user: uuid.UUID, count: int) -> list[uuid.UUID]:
    """Queued runs to subscribe to (their create event is seq 1)."""
    db = Database(database_url)
    try:
        return [
            create_run(
                db,
                user_id=user,
                kind="agent",
                workflow_id="echo",
                input={},
                metadata={},
                steps=[("echo", "python")],
            ).id
            for _ in range(count)
        ]
    finally:
        db.close()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by pid and its children (gunicorn's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for candidate in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{candidate}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children(pid: int) -> list[int]:
    """The direct children of pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_health(base_url: str, server: subprocess.Popen[bytes]) -> None:
    """Until the web process answers /api/health, or stop the bench."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("bench: gunicorn exited at start")
        try:
            if requests.get(f"{base_url}/api/health", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise SystemExit("bench: gunicorn did not answer in time")


class Tally:
    """What the sockets received."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received = 0
        self.closed_early = 0
        self.out_of_order = 0


async def measure(
    url: str,
    redis_url: str,
    run_ids: list[uuid.UUID],
    sockets: int,
    *,
    rate: int,
    seconds: float,
    server_pid: int,
) -> dict[str, Any]:
    """Connect and subscribe every socket, publish, collect; bounded in time throughout."""
    tally = Tally()
    subscribed = 0
    all_subscribed = asyncio.Event()
    opened: list[Any] = []
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def one_socket(index: int) -> None:
        nonlocal subscribed
        run_id = run_ids[index % len(run_ids)]
        async with gate:
            # The client offers permessage-deflate, as browsers do; the server declines it unless
            # WS_COMPRESSION is set.
            ws = await connect(url, ping_interval=None, open_timeout=60, max_queue=None)
            opened.append(ws)
            await ws.send(json.dumps({"type": "subscribe", "topic": run_topic(run_id)}))
            await ws.recv()  # subscribed
            await ws.recv()  # the snapshot
        subscribed += 1
        if subscribed == sockets:
            all_subscribed.set()
        last = 1
        try:
            async for raw in ws:  # until the bench closes the socket
                now = time.time()
                message = json.loads(raw)
                if message.get("type") != "event":
                    continue
                if message["seq"] != last + 1:
                    tally.out_of_order += 1
                last = message["seq"]
                tally.received += 1
                tally.latencies.append(now - message["data"]["sent"])
        except Exception:  # closed by the server (overflow, say): counted as lost messages
            tally.closed_early += 1

    started = time.monotonic()
    tasks = [asyncio.create_task(one_socket(i)) for i in range(sockets)]
    try:
        await asyncio.wait_for(all_subscribed.wait(), timeout=CONNECT_SECONDS)
    except TimeoutError:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        raise SystemExit(f"bench: only {subscribed}/{sockets} sockets subscribed in time") from None
    connect_seconds = time.monotonic() - started

    server_cpu, client_cpu, publish_started = (
        process_tree_cpu(server_pid),
        time.process_time(),
        time.monotonic(),
    )
    # Its own process: in this one it would share the GIL with the client and delay its sends.
    total = multiprocessing.get_context("spawn").Value("q", 0)
    publisher = multiprocessing.get_context("spawn").Process(
        target=publish, args=(redis_url, run_ids, rate, seconds, total), daemon=True
    )
    publisher.start()
    deadline = time.monotonic() + seconds + 60
    while publisher.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    publisher.join(timeout=5)
    published = published_per_run(run_ids, total.value)
    expected = sum(published[run_ids[i % len(run_ids)]] for i in range(sockets))
    deadline = time.monotonic() + DRAIN_SECONDS
    while tally.received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    measured_seconds = time.monotonic() - publish_started
    server_cpu = process_tree_cpu(server_pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = sum(1 for r in results if isinstance(r, BaseException))
    return {
        "connect_seconds": connect_seconds,
        "expected": expected,
        "tally": tally,
        "failed": failed,
        "publishes": sum(published.values()),
        "seconds": seconds,
        "measured_seconds": measured_seconds,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }


def published_per_run(run_ids: list[uuid.UUID], total: int) -> dict[uuid.UUID, int]:
    """How many events each run got when total were published round-robin."""
    return {
        run_id: total // len(run_ids) + (1 if i < total % len(run_ids) else 0)
        for i, run_id in enumerate(run_ids)
    }


def publish(
    redis_url: str,
    run_ids: list[uuid.UUID],
    rate: int,
    seconds: float,
    total: Any,
) -> None:
    """Publish run events round-robin over the runs at `rate` per second, in 10 ms ticks."""
    client = redis.Redis.from_url(redis_url)
    seqs = dict.fromkeys(run_ids, 1)
    tick = 0.01
    start = time.monotonic()
    index = 0
    try:
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * rate) + 1
            with client.pipeline(transaction=False) as pipe:
                for _ in range(due - index):
                    run_id = run_ids[index % len(run_ids)]
                    index += 1
                    seqs[run_id] += 1
                    envelope = {
                        "type": "event",
                        "channel": "workflows",
                        "topic": run_topic(run_id),
                        "seq": seqs[run_id],
                        "event": "bench_probe",
                        "data": {"sent": time.time()},
                        "ts": datetime.now(UTC).isoformat(),
                    }
                    pipe.publish(topic_channel(run_topic(run_id)), json.dumps(envelope))
                pipe.execute()
            index_due = (time.monotonic() - start) / tick
            sleep_for = (int(index_due) + 1) * tick - (time.monotonic() - start)
            if sleep_for > 0:
                time.sleep(sleep_for)
    finally:
        client.close()
        total.value = index


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    tally: Tally = result["tally"]
    lost = result["expected"] - tally.received
    print(f"connected and subscribed in {result['connect_seconds']:.1f} s")
    print(
        f"CPU over the {result['measured_seconds']:.1f} s of publishing: gunicorn "
        f"{result['server_cpu']:.1f} s, client {result['client_cpu']:.1f} s "
        f"(of {2 * result['measured_seconds']:.0f} core-seconds on 2 cores)"
    )
    print(
        f"published {result['publishes']} events; expected {result['expected']} deliveries "
        f"({result['expected'] / result['seconds']:.0f}/s)"
    )
    if tally.latencies:
        ordered = sorted(tally.latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        print(
            f"latency ms: p50 {p50:.1f}  p99 {p99:.1f}  max {ordered[-1] * 1000:.1f}  "
            f"(target p99 < 100)"
        )
    print(
        f"received {tally.received}; lost {lost} (target 0); out of order {tally.out_of_order}; "
        f"sockets closed early {tally.closed_early}; socket errors {result['failed']}"
    )


if __name__ == "__main__":
    main()
