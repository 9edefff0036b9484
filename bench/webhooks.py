"""Stripe webhooks per second: accepted at `POST /api/payments/webhook` and processed by one
worker, beside same-run baselines.

Each round signs N fresh `checkout.session.completed` credit-pack events (spread over 200 users)
as Stripe does, then:
  accepted     client threads POST them to the app (gunicorn, 2 gthread workers, on 127.0.0.1,
               see bench/services.py) while the worker is paused: verify the HMAC, insert into
               stripe_events, queue, answer 200;
  processed    the worker (solo, one process) is resumed and timed until every event is final:
               lock the event, grant the credits once, record the payment, mark it processed;
  raw insert   baseline: the same payloads inserted into a stripe_events-shaped table, one
               transaction each, from one connection (the durable write alone);
  bare Celery  baseline: the same number of no-op Celery tasks drained by one solo worker.
Prints per-round figures, then medians.
Usage: python -m bench.webhooks [--events 2000] [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
import stripe

from bench.baseline_tasks import COUNTER_KEY
from bench.harness import (
    BARE_TASK,
    Bench,
    bench_environment,
    rate,
    timed,
    timed_resume,
    worker_pause,
)
from bench.services import app_processes
from conveyor.db import sql_connection

MAX_EVENTS = 20_000
MAX_ROUNDS = 10
WEBHOOK_SECRET = "whsec_bench_only"  # noqa: S105 - signs nothing that leaves the bench
USERS = 200


def credit_pack_event(user: uuid.UUID) -> dict[str, object]:
    """A `checkout.session.completed` event of a paid 100-credit pack, the fields the worker reads
    as Stripe sends them."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "livemode": False,
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "mode": "payment",
                "client_reference_id": str(user),
                "customer": f"cus_{uuid.uuid4().hex[:14]}",
                "payment_intent": f"pi_{uuid.uuid4().hex[:14]}",
                "payment_status": "paid",
                "amount_total": 1000,
                "currency": "usd",
                "metadata": {
                    "conveyor_user_id": str(user),
                    "conveyor_price_id": "price_pack_100",
                    "conveyor_credits": "100",
                },
            }
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    n = max(100, min(args.events, MAX_EVENTS))
    rounds = max(1, min(args.rounds, MAX_ROUNDS))
    clients = max(1, min(args.clients, 16))

    with (
        bench_environment() as bench,
        app_processes(
            bench,
            queues="webhooks",
            concurrency=1,
            env={"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "STRIPE_RECONCILE_FROM_API": "false"},
        ) as app,
    ):
        users = [uuid.uuid4() for _ in range(USERS)]
        bench.watch.execute(
            "create table bench_stripe_events (like conveyor.stripe_events including all)"
        )
        sessions = [requests.Session() for _ in range(clients)]

        def deliveries(count: int) -> list[tuple[str, bytes]]:
            out = []
            for i in range(count):
                document = credit_pack_event(users[i % USERS])
                out.append((document["id"], json.dumps(document).encode()))
            return out

        def accept_and_process(count: int) -> tuple[float, float]:
            batch = deliveries(count)

            def post(item: tuple[int, tuple[str, bytes]]) -> None:
                index, (_, payload) = item
                response = sessions[index % clients].post(
                    f"{app.base_url}/api/payments/webhook",
                    data=payload,
                    headers={
                        "Content-Type": "application/json",
                        # Stripe's own signer: what its webhook verification expects.
                        "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
                            payload.decode(), WEBHOOK_SECRET
                        ),
                    },
                    timeout=30,
                )
                if response.status_code != 200 or not response.json()["queued"]:
                    raise SystemExit(f"bench: webhook: {response.status_code} {response.text}")

            ids = [event_id for event_id, _ in batch]
            worker_pause(app.worker)
            with ThreadPoolExecutor(clients) as pool:
                accepted = timed(lambda: list(pool.map(post, enumerate(batch))))
            processed = timed_resume(app.worker, lambda: processed_count(bench, ids) == count)
            return accepted, processed

        def raw_insert(count: int) -> float:
            batch = deliveries(count)

            def run() -> None:
                with sql_connection(bench.db.url, autocommit=True) as conn:
                    for event_id, payload in batch:
                        conn.execute(
                            "insert into bench_stripe_events (id, type, created, livemode, "
                            "payload) values (%s, 'checkout.session.completed', now(), false, "
                            "%s::jsonb) on conflict (id) do nothing",
                            (event_id, payload.decode()),
                        )

            return timed(run)

        def bare_celery(count: int) -> float:
            bench.client.delete(COUNTER_KEY)
            worker_pause(bench.worker)
            for _ in range(count):
                bench.celery.send_task(BARE_TASK, args=[bench.redis_url])
            return timed_resume(bench.worker, lambda: done_count(bench) >= count)

        accept_and_process(min(n, 200))  # warm up: connections, plans, imports
        bare_celery(min(n, 200))

        results: dict[str, list[float]] = {"accept": [], "process": [], "raw": [], "bare": []}
        for index in range(rounds):
            accepted, processed = accept_and_process(n)
            results["accept"].append(accepted)
            results["process"].append(processed)
            results["raw"].append(raw_insert(n))
            results["bare"].append(bare_celery(n))
            print(
                f"round {index + 1}/{rounds}: accepted {rate(n, accepted):.0f}/s, "
                f"processed {rate(n, processed):.0f}/s, raw insert "
                f"{rate(n, results['raw'][-1]):.0f}/s, bare Celery "
                f"{rate(n, results['bare'][-1]):.0f}/s",
                flush=True,
            )
        granted = granted_count(bench)

    med = statistics.median
    accept_rate = rate(n, med(results["accept"]))
    process_rate = rate(n, med(results["process"]))
    raw_rate = rate(n, med(results["raw"]))
    bare_rate = rate(n, med(results["bare"]))
    print()
    print(
        f"Stripe webhooks/s: N={n} per round, {rounds} rounds, medians; {clients} client threads; "
        f"one solo worker; {os.cpu_count()} cores shared by client, web, worker and Postgres"
    )
    rows = [
        ("accepted at POST /api/payments/webhook", f"{accept_rate:.0f}"),
        ("raw insert, one transaction each (baseline)", f"{raw_rate:.0f}"),
        ("processed by one worker", f"{process_rate:.0f}"),
        ("bare Celery no-op tasks (baseline)", f"{bare_rate:.0f}"),
        ("accepted / raw insert", f"{accept_rate / raw_rate:.2f}"),
        ("processed / bare Celery", f"{process_rate / bare_rate:.2f}"),
        (f"credit packs granted (expected {rounds * n + min(n, 200)})", f"{granted}"),
    ]
    for label, value in rows:
        print(f"{label:52}{value:>10}")


def processed_count(bench: Bench, ids: list[str]) -> int:
    row = bench.watch.execute(
        "select count(*) from stripe_events where id = any(%s) and status = 'processed'", (ids,)
    ).fetchone()
    return int(row[0]) if row else 0


def granted_count(bench: Bench) -> int:
    row = bench.watch.execute(
        "select count(*) from credit_transactions where kind = 'purchase'"
    ).fetchone()
    return int(row[0]) if row else 0


def done_count(bench: Bench) -> int:
    return int(bench.client.get(COUNTER_KEY) or 0)


if __name__ == "__main__":
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: SystemExit(1))
    main()
    print(f"bench took {time.monotonic() - started:.0f} s")
