"""Run events: appended to `run_events` with a per-run seq, then published on Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import redis
import structlog
from pydantic import BaseModel

from conveyor.constants import run_topic, topic_channel
from conveyor.db import Connection

log = structlog.get_logger(__name__)

STATUS_UPDATE = "workflow_status_update"


class RunEvent(BaseModel):
    """One entry of a run's event log, in the websocket envelope's terms."""

    run_id: UUID
    seq: int
    event: str
    data: dict[str, Any]
    ts: datetime

    @property
    def topic(self) -> str:
        """The subscription topic this event belongs to."""
        return run_topic(self.run_id)

    def envelope(self) -> dict[str, Any]:
        """The message a websocket subscriber receives."""
        return {
            "type": "event",
            "channel": "workflows",
            "topic": self.topic,
            "seq": self.seq,
            "event": self.event,
            "data": self.data,
            "ts": self.ts.isoformat(),
        }


def append_event(conn: Connection, run_id: UUID, event: str, data: dict[str, Any]) -> RunEvent:
    """Append an event inside the caller's transaction; the run row lock makes seq gap-free."""
    row = conn.execute(
        "update public.workflow_runs set last_event_seq = last_event_seq + 1 "
        "where id = %s returning last_event_seq",
        (run_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"run {run_id} does not exist")
    stored = conn.execute(
        "insert into public.run_events (run_id, seq, event, data) values (%s, %s, %s, %s) "
        "returning created_at",
        (run_id, row["last_event_seq"], event, json.dumps(data, default=str)),
    ).fetchone()
    assert stored is not None
    return RunEvent(
        run_id=run_id, seq=row["last_event_seq"], event=event, data=data, ts=stored["created_at"]
    )


class EventPublisher:
    """Publishes committed events on Redis. Best effort: run_events stays the source of truth."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30
        )

    def publish(self, *events: RunEvent) -> None:
        """Publish each event on its topic's channel; a Redis outage is logged, not raised."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(topic_channel(event.topic), json.dumps(event.envelope()))
                pipe.execute()
        except redis.RedisError as exc:
            # Subscribers catch up from run_events with `since`, so a dropped publish loses nothing.
            log.warning("event_publish_failed", error=str(exc), count=len(events))

    @contextmanager
    def subscription(self, topic: str) -> Iterator[redis.client.PubSub | None]:
        """A subscription to a topic's events, or None while Redis is unreachable."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(topic_channel(topic))
        except redis.RedisError as exc:
            log.warning("event_subscribe_failed", error=str(exc))
            pubsub.close()
            yield None
            return
        try:
            yield pubsub
        finally:
            pubsub.close()

    def ping(self) -> bool:
        """True when Redis answers PING."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()
