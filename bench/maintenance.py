"""Retention deletes of old usage events in batches, while other sessions keep inserting.

Fills usage_events with N rows older than the retention, then measures, in one run:
  idle inserts     single-row inserts (one transaction each, as record_usage commits) from one
                   client for a few seconds: latency p50/p99 with nothing else running;
  batched purge    conveyor.ops.maintenance.purge (MAINTENANCE_BATCH_SIZE rows per transaction) of
                   the N rows, the insert client running beside it: purge rows/s, insert
                   latency p50/p99/max during it;
  one DELETE       baseline: the same N rows refilled and removed by a single DELETE statement,
                   the insert client beside it.
Usage: python -m bench.maintenance [--rows 1000000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.harness import bench_environment, timed
from conveyor.db import sql_connection
from conveyor.ops.maintenance import purge

MAX_ROWS = 3_000_000
FILL_CHUNK = 200_000
IDLE_SECONDS = 5.0
MAX_INSERT_SECONDS = 600.0  # the insert client stops by then whatever happens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    rows = max(10_000, min(args.rows, MAX_ROWS))
    batch = max(100, min(args.batch, 100_000))
    cutoff = datetime.now(UTC) - timedelta(days=400)

    with bench_environment() as bench:
        url = bench.db.url
        fill_seconds = timed(lambda: fill(url, rows, cutoff))
        print(f"filled {rows} old usage events in {fill_seconds:.1f} s", flush=True)

        idle = inserts_while(url, lambda: time.sleep(IDLE_SECONDS))
        purge_seconds = 0.0

        def batched() -> None:
            nonlocal purge_seconds
            purge_seconds = timed(
                lambda: purge(bench.db, "usage_events", "occurred_at", cutoff, batch)
            )

        during_purge = inserts_while(url, batched)
        fill(url, rows, cutoff)
        delete_seconds = 0.0

        def one_delete() -> None:
            nonlocal delete_seconds
            with sql_connection(url, autocommit=True) as conn:
                delete_seconds = timed(
                    lambda: conn.execute(
                        "delete from usage_events where occurred_at < %s", (cutoff,)
                    )
                )

        during_delete = inserts_while(url, one_delete)

    print()
    print(f"retention delete of {rows} rows, batches of {batch}; one insert client beside it")
    table = [
        ("batched purge: seconds", f"{purge_seconds:.1f}"),
        ("batched purge: rows/s", f"{rows / purge_seconds:.0f}"),
        ("one DELETE statement: seconds (baseline)", f"{delete_seconds:.1f}"),
        ("inserts idle: p50 / p99 ms", latency(idle)),
        ("inserts during batched purge: p50 / p99 ms", latency(during_purge)),
        ("inserts during one DELETE: p50 / p99 ms", latency(during_delete)),
        ("slowest insert during batched purge: ms", f"{max(during_purge) * 1000:.1f}"),
        ("slowest insert during one DELETE: ms", f"{max(during_delete) * 1000:.1f}"),
        (
            "inserts during batched purge / during DELETE",
            f"{len(during_purge)} / {len(during_delete)}",
        ),
    ]
    for label, value in table:
        print(f"{label:48}{value:>16}")


def fill(url: str, rows: int, before: datetime) -> None:
    """rows usage events older than `before`, spread over 1,000 users."""
    with sql_connection(url, autocommit=True) as conn:
        for start in range(0, rows, FILL_CHUNK):
            count = min(FILL_CHUNK, rows - start)
            conn.execute(
                """
                insert into usage_events (user_id, idempotency_key, provider, model,
                  prompt_tokens, completion_tokens, input_cost_micro_usd, output_cost_micro_usd,
                  occurred_at)
                select ('00000000-0000-0000-0000-' || lpad((i %% 1000)::text, 12, '0'))::uuid,
                       %(prefix)s || i, 'openai', 'gpt-4o-mini', 100, 50, 15, 30,
                       %(before)s - make_interval(secs => i %% 86400)
                  from generate_series(%(start)s, %(end)s) i
                """,
                {"prefix": f"old-{uuid.uuid4().hex[:8]}-", "before": before - timedelta(days=1),
                 "start": start, "end": start + count - 1},
            )  # fmt: skip


def inserts_while(url: str, work: object) -> list[float]:
    """Latencies of single-row inserts made while work() runs in another thread."""
    assert callable(work)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (work(), done.set()))
    latencies: list[float] = []
    user = uuid.uuid4()
    deadline = time.monotonic() + MAX_INSERT_SECONDS
    with sql_connection(url, autocommit=True) as conn:
        worker.start()
        while not done.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute(
                "insert into usage_events (user_id, idempotency_key, provider, model, "
                "prompt_tokens, completion_tokens, input_cost_micro_usd, output_cost_micro_usd) "
                "values (%s, %s, 'openai', 'gpt-4o-mini', 1, 1, 0, 0)",
                (user, uuid.uuid4().hex),
            )
            latencies.append(time.perf_counter() - started)
    worker.join()
    return latencies


def latency(samples: list[float]) -> str:
    """p50 / p99 in ms."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:.2f} / {p99 * 1000:.2f}"


if __name__ == "__main__":
    main()
