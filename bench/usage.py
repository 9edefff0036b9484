"""Usage events/s through `POST /api/usage` -> worker -> Postgres, beside the same rows written by
raw COPY, by record_usage_batch called directly, and by the per-event record_usage, in one run.

Each round writes N fresh events (batches of 1,000, spread over 200 users with ample credits,
half priced by the caller and half from model_prices) through each path:
  raw COPY     one COPY of the rows, costs already computed, into a scratch table shaped like
               usage_events (`like ... including all`: same columns, defaults, indexes);
  batch SQL    conveyor.ledger.ingest.record_batch from this process, one transaction per 1,000;
  end to end   4 client threads POST the batches to the app (gunicorn, 2 gthread workers, on
               127.0.0.1, see bench/services.py) which validates and queues them; a Celery
               worker on the `usage` queue (prefork, 2 processes, as `celery worker` runs on 2
               cores; solo with --concurrency 1) records them; timed from the first POST until
               every event is committed;
  per event    ledger.record_usage, one transaction per event (min(N, 2,000) events).
Everything shares this machine's cores. Prints per-round figures, then medians over rounds.
Usage: python -m bench.usage [--events 20000] [--rounds 3] [--clients 4] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import requests

from bench.harness import Bench, bench_environment, rate, timed, wait_until
from bench.services import app_processes
from conveyor import ledger
from conveyor.auth.tokens import mint_service_token
from conveyor.db import sql_connection
from conveyor.ledger.ingest import MAX_BATCH, UsageEventIn, record_batch

MAX_EVENTS = 100_000  # every drain must finish within the harness's DRAIN_TIMEOUT_SECONDS
MAX_ROUNDS = 10
PER_EVENT_MAX = 2_000  # the per-event path is the slow one: a sample keeps the run short
USERS = 200
API_SECRET = "a" * 40  # signs nothing that leaves the bench
PRICES = {"gpt-4o-mini": (150_000, 600_000), "gpt-4.1-mini": (400_000, 1_600_000)}
COPY_COLUMNS = (
    "user_id", "idempotency_key", "provider", "model", "agent_mode", "prompt_tokens",
    "completion_tokens", "input_cost_micro_usd", "output_cost_micro_usd", "latency_ms",
    "credits_charged", "occurred_at",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (1: solo)")
    args = parser.parse_args()
    n = max(MAX_BATCH, min(args.events, MAX_EVENTS)) // MAX_BATCH * MAX_BATCH
    rounds = max(1, min(args.rounds, MAX_ROUNDS))
    clients = max(1, min(args.clients, 16))
    concurrency = max(1, min(args.concurrency, 8))
    per_event_n = min(n, PER_EVENT_MAX)

    with (
        bench_environment() as bench,
        app_processes(
            bench, queues="usage", concurrency=concurrency, env={"API_JWT_SECRET": API_SECRET}
        ) as app,
        ExitStack() as stack,
    ):
        base_url = app.base_url
        users = [uuid.uuid4() for _ in range(USERS)]
        for user in users:
            ledger.add_credits(bench.db, user, 10**12, kind="purchase", reference=f"bench:{user}")
        bench.watch.execute(
            "create table bench_usage_copy (like conveyor.usage_events including all)"
        )
        token = mint_service_token("bench", ["usage:write"], secret=API_SECRET)
        sessions = [requests.Session() for _ in range(clients)]
        for session in sessions:
            session.headers.update(
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            )

        def end_to_end(prefix: str, count: int) -> float:
            bodies = [
                json.dumps({"events": batch}).encode()
                for batch in batches(wire_events(users, prefix, count))
            ]
            floor = max_event_id(bench)

            def post(item: tuple[int, bytes]) -> None:
                index, body = item
                response = sessions[index % clients].post(
                    f"{base_url}/api/usage", data=body, timeout=60
                )
                if response.status_code != 202:
                    raise SystemExit(
                        f"bench: POST /api/usage: {response.status_code} {response.text}"
                    )

            def run() -> None:
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(post, enumerate(bodies)))
                # Redis first (cheap to poll): a message leaves `unacked` once its batch committed.
                wait_until(lambda: queue_drained(bench))
                wait_until(lambda: events_above(bench, floor) >= count)

            return timed(run)

        def batch_sql(prefix: str, count: int) -> float:
            models = [UsageEventIn.model_validate(e) for e in wire_events(users, prefix, count)]
            return timed(lambda: [record_batch(bench.db, batch) for batch in batches(models)])

        def per_event(prefix: str, count: int) -> float:
            calls = [
                (uuid.UUID(e.pop("user_id")), ledger.UsageRecord.model_validate(e))
                for e in wire_events(users, prefix, count)
            ]

            def run() -> None:
                for user, record in calls:
                    with bench.db.transaction() as conn:
                        ledger.record_usage(conn, user, record)

            return timed(run)

        # Connected before timing, as the other paths' pooled connections are: the baseline is
        # the COPY itself (its own transaction), not a connection setup.
        copy_conn = stack.enter_context(sql_connection(bench.db.url, autocommit=True))

        def raw_copy(prefix: str, count: int) -> float:
            rows = [copy_row(e) for e in wire_events(users, prefix, count)]

            def run() -> None:
                with copy_conn.cursor().copy(
                    f"copy bench_usage_copy ({', '.join(COPY_COLUMNS)}) from stdin"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)

            return timed(run)

        # Warm up every path: connections, prepared plans, the worker's imports.
        end_to_end("warm-e2e", MAX_BATCH)
        batch_sql("warm-sql", MAX_BATCH)
        per_event("warm-one", 50)
        raw_copy("warm-copy", MAX_BATCH)

        results: dict[str, list[float]] = {"copy": [], "sql": [], "e2e": [], "one": []}
        for index in range(rounds):
            results["copy"].append(raw_copy(f"copy-{index}", n))
            results["sql"].append(batch_sql(f"sql-{index}", n))
            results["e2e"].append(end_to_end(f"e2e-{index}", n))
            results["one"].append(per_event(f"one-{index}", per_event_n))
            print(
                f"round {index + 1}/{rounds}: raw COPY {rate(n, results['copy'][-1]):.0f}/s, "
                f"batch SQL {rate(n, results['sql'][-1]):.0f}/s, "
                f"end to end {rate(n, results['e2e'][-1]):.0f}/s, "
                f"record_usage per event {rate(per_event_n, results['one'][-1]):.0f}/s",
                flush=True,
            )
        stored = events_above(bench, 0)
        expected = 2 * MAX_BATCH + 50 + rounds * (2 * n + per_event_n)

    med = statistics.median
    copy_rate = rate(n, med(results["copy"]))
    sql_rate = rate(n, med(results["sql"]))
    e2e_rate = rate(n, med(results["e2e"]))
    one_rate = rate(per_event_n, med(results["one"]))
    print()
    print(
        f"usage events/s: N={n} per round ({per_event_n} per event), {rounds} rounds, medians; "
        f"worker pool {'solo' if concurrency == 1 else f'prefork x{concurrency}'}; "
        f"{os.cpu_count()} cores shared by client, web, worker and Postgres"
    )
    rows = [
        ("raw COPY into a usage_events-shaped table", f"{copy_rate:.0f}"),
        ("record_usage_batch direct (1,000/txn)", f"{sql_rate:.0f}"),
        ("POST /api/usage -> worker -> Postgres", f"{e2e_rate:.0f}"),
        ("record_usage per event (1 txn each)", f"{one_rate:.0f}"),
        ("raw COPY / end to end (target <= 3)", f"{copy_rate / e2e_rate:.2f}"),
        (f"events stored (expected {expected})", f"{stored}"),
    ]
    for label, value in rows:
        print(f"{label:44}{value:>10}")


def wire_events(users: list[uuid.UUID], prefix: str, count: int) -> list[dict[str, Any]]:
    """count events as a backend would send them: half with costs, half left to model_prices."""
    rng = random.Random(prefix)
    events = []
    for i in range(count):
        event: dict[str, Any] = {
            "user_id": str(rng.choice(users)),
            "idempotency_key": f"{prefix}-{i}",
            "provider": "openai",
            "model": rng.choice(list(PRICES)),
            "agent_mode": "chat",
            "prompt_tokens": rng.randint(10, 4000),
            "completion_tokens": rng.randint(10, 1000),
            "latency_ms": rng.randint(100, 5000),
            "credits": rng.randint(0, 1),
        }
        if i % 2:
            event["input_cost_micro_usd"] = rng.randint(0, 2000)
            event["output_cost_micro_usd"] = rng.randint(0, 2000)
        events.append(event)
    return events


def copy_row(event: dict[str, Any]) -> tuple[Any, ...]:
    """The usage_events row an event becomes, costs computed here."""
    input_price, output_price = PRICES[event["model"]]
    input_cost = event.get("input_cost_micro_usd")
    output_cost = event.get("output_cost_micro_usd")
    if input_cost is None:
        input_cost = -(-event["prompt_tokens"] * input_price // 10**6)
    if output_cost is None:
        output_cost = -(-event["completion_tokens"] * output_price // 10**6)
    return (
        event["user_id"], event["idempotency_key"], event["provider"], event["model"],
        event["agent_mode"], event["prompt_tokens"], event["completion_tokens"], input_cost,
        output_cost, event["latency_ms"], event["credits"], "now",
    )  # fmt: skip


def batches(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), MAX_BATCH):
        yield items[start : start + MAX_BATCH]


def max_event_id(bench: Bench) -> int:
    row = bench.watch.execute("select coalesce(max(id), 0) from usage_events").fetchone()
    return int(row[0]) if row else 0


def queue_drained(bench: Bench) -> bool:
    """No usage message waiting or in flight (kombu keeps fetched messages in `unacked`)."""
    return bench.client.llen("usage") == 0 and bench.client.hlen("unacked") == 0


def events_above(bench: Bench, floor: int) -> int:
    row = bench.watch.execute(
        "select count(*) from usage_events where id > %s", (floor,)
    ).fetchone()
    return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
