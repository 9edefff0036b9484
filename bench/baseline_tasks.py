"""The baseline: a bare Celery no-op task that only counts itself in Redis."""

from __future__ import annotations

import redis
from celery import shared_task

COUNTER_KEY = "bench:noop:done"


@shared_task(name="runs.bench_noop", ignore_result=True)
def noop(redis_url: str) -> None:
    """Do nothing but count, so the bench can tell when every task ran."""
    client = redis.Redis.from_url(redis_url)
    client.incr(COUNTER_KEY)
    client.close()
