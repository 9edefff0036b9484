"""A worker bootstep that writes this worker's heartbeat to Redis every few seconds.

The dashboard and `conveyor status` list workers from these keys rather than broadcasting a
Celery ping: a ping waits out its timeout on every read, a key with a TTL costs one SCAN, and a
worker that dies disappears when its key expires.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import structlog
from celery import bootsteps
from celery.worker import state

from conveyor import ops
from conveyor.constants import QUEUES

log = structlog.get_logger(__name__)


class HeartbeatThread:
    """Writes one worker's heartbeat now and then every `interval` seconds until stopped."""

    def __init__(
        self,
        client: redis.Redis,
        describe: Callable[[], ops.WorkerHeartbeat],
        *,
        interval: float = ops.HEARTBEAT_SECONDS,
    ) -> None:
        self._client = client
        self._describe = describe
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conveyor-heartbeat", daemon=True)

    def start(self) -> None:
        """Write the first beat at once (a worker is listed as soon as it starts), then loop."""
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the key: a cleanly stopped worker is gone at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            ops.clear_heartbeat(self._client, self._describe().hostname)
        except redis.RedisError as exc:
            log.warning("heartbeat_clear_failed", error=str(exc))
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()

    def _beat(self) -> None:
        try:
            ops.write_heartbeat(self._client, self._describe())
        except redis.RedisError as exc:  # Redis away: the next beat tries again
            log.warning("heartbeat_failed", error=str(exc))


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a HeartbeatThread for the worker's lifetime."""

    # Start after the pool: prefork children should not be forked beside a running thread.
    requires = ("celery.worker.components:Pool",)

    def create(self, worker: Any) -> HeartbeatThread:
        """The heartbeat of this worker, on the app's Redis."""
        started_at = datetime.now(UTC)
        app = worker.app

        def describe() -> ops.WorkerHeartbeat:
            consumed = list(app.amqp.queues.consume_from or ()) or list(QUEUES)
            return ops.WorkerHeartbeat(
                hostname=worker.hostname,
                pid=os.getpid(),
                concurrency=int(worker.concurrency or 1),
                queues=sorted(consumed),
                started_at=started_at,
                seen_at=datetime.now(UTC),
                active=len(state.active_requests),
                processed=sum(state.total_count.values()),
            )

        client = redis.Redis.from_url(
            app.conveyor_settings.redis_url, socket_connect_timeout=2, socket_timeout=2
        )
        return HeartbeatThread(client, describe)
