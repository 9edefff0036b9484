"""Prometheus metrics of every process, scraped at `/metrics`.

With PROMETHEUS_MULTIPROC_DIR set (`conveyor run` sets it for web and worker), each process,
gunicorn workers and Celery pool children included, writes its samples to files there and a scrape
adds them up; without it (tests, a single process) the default registry is read.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SCRAPE_ATTEMPTS = 10
SCRAPE_RETRY_SECONDS = 0.05
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

RUNS_SUBMITTED = Counter(
    "conveyor_runs_submitted", "Runs accepted at submit (not repeats of an Idempotency-Key).",
    ["workflow"],
)  # fmt: skip
RUNS_FINISHED = Counter(
    "conveyor_runs_finished", "Runs that reached a final status.", ["workflow", "status"]
)
RUN_DURATION = Histogram(
    "conveyor_run_duration_seconds", "Time from a worker's claim to the run's final status.",
    ["workflow"], buckets=DURATION_BUCKETS,
)  # fmt: skip
STEP_DURATION = Histogram(
    "conveyor_step_duration_seconds", "Time one step attempt took, by step kind and outcome.",
    ["kind", "outcome"], buckets=DURATION_BUCKETS,
)  # fmt: skip
USAGE_TOKENS = Counter(
    "conveyor_usage_tokens",
    "AI tokens: recorded by runs' llm steps (source=run) or accepted at POST /api/usage "
    "(source=api, before duplicates are dropped).",
    ["model", "kind", "source"],
)
USAGE_COST = Counter(
    "conveyor_usage_cost_micro_usd", "AI cost in micro-USD, as conveyor_usage_tokens.",
    ["model", "source"],
)  # fmt: skip
OUTBOUND_WEBHOOKS = Counter(
    "conveyor_outbound_webhook_attempts",
    "Outbound webhook delivery messages by outcome (succeeded, retrying, gave_up, "
    "endpoint_disabled, skipped).",
    ["outcome"],
)
WEBHOOK_EVENTS = Counter(
    "conveyor_webhook_events",
    "Stripe events: at the endpoint (stored, duplicate, invalid_signature, invalid) and as "
    "processed (processed, skipped, ignored, failed).",
    ["type", "result"],
)
WEBSOCKET_CONNECTIONS = Gauge(
    "conveyor_websocket_connections", "Open websockets, by channel.", ["channel"],
    multiprocess_mode="livesum",
)  # fmt: skip
HTTP_REQUESTS = Counter(
    "conveyor_http_requests", "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "conveyor_http_request_duration_seconds", "HTTP request time by route template.",
    ["route"], buckets=HTTP_BUCKETS,
)  # fmt: skip

RATE_LIMIT_WAIT = Histogram(
    "conveyor_rate_limit_wait_seconds",
    "Time a model call waited for its global rate limit (inline, or until a parked run's retry).",
    ["limit"], buckets=DURATION_BUCKETS,
)  # fmt: skip


class QueueDepths(Collector):
    """`conveyor_queue_depth{queue}` read when scraped (messages waiting in Redis)."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """One gauge sample per queue."""
        family = GaugeMetricFamily(
            "conveyor_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for queue, depth in self._read().items():
            family.add_metric([queue], depth)
        yield family


class RunsWaiting(Collector):
    """`conveyor_runs_waiting{reason}` read when scraped (runs held or parked, by why)."""

    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """One gauge sample per reason."""
        family = GaugeMetricFamily(
            "conveyor_runs_waiting",
            "Runs not executing, by what they wait for (concurrency, debounce, credits, "
            "rate_limit, sleep, event, approval, child, children).",
            labels=["reason"],
        )
        for reason, count in self._read().items():
            family.add_metric([reason], count)
        yield family


def forget_process(pid: int) -> None:
    """Drop the live gauges of a process that exited (multiprocess mode only; a no-op otherwise)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def read_process_files(registry: CollectorRegistry) -> bytes:
    """generate_latest over the processes' metric files. A process that is starting creates its
    file empty and sizes it a moment later; a scrape in between reads too few bytes
    (prometheus_client raises struct.error), so it reads again shortly instead of failing."""
    for _ in range(SCRAPE_ATTEMPTS - 1):
        try:
            return generate_latest(registry)
        except struct.error:
            time.sleep(SCRAPE_RETRY_SECONDS)
    return generate_latest(registry)


def exposition(
    queue_depths: Callable[[], Mapping[str, int]] | None = None,
    runs_waiting: Callable[[], Mapping[str, int]] | None = None,
) -> tuple[bytes, str]:
    """The text a scrape returns, and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = read_process_files(registry)
    else:
        body = generate_latest(REGISTRY)
    if queue_depths is not None:
        extra = CollectorRegistry()
        extra.register(QueueDepths(queue_depths))
        body += generate_latest(extra)
    if runs_waiting is not None:
        extra = CollectorRegistry()
        extra.register(RunsWaiting(runs_waiting))
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


def record_tokens(model: str, prompt: int, completion: int, cost: int, source: str) -> None:
    """Count one usage record's tokens and cost."""
    USAGE_TOKENS.labels(model, "prompt", source).inc(prompt)
    USAGE_TOKENS.labels(model, "completion", source).inc(completion)
    USAGE_COST.labels(model, source).inc(cost)
