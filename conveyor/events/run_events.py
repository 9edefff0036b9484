"""Run events: appended to `run_events` with a per-run seq, then published on Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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
    """Append one event inside the caller's transaction (see append_events)."""
    return append_events(conn, run_id, [(event, data)])[0]


def append_events(
    conn: Connection, run_id: UUID, events: Sequence[tuple[str, dict[str, Any]]]
) -> list[RunEvent]:
    """Append events inside the caller's transaction, in one statement; the run row lock taken
    by bumping `last_event_seq` makes seqs gap-free per run."""
    rows = conn.execute(
        """
        with bumped as (
          update workflow_runs set last_event_seq = last_event_seq + %(count)s
           where id = %(run)s
          returning last_event_seq - %(count)s as base)
        insert into run_events (run_id, seq, event, data)
        select %(run)s, bumped.base + e.position, e.item ->> 0, e.item -> 1
          from bumped,
               jsonb_array_elements(%(items)s::jsonb) with ordinality as e(item, position)
        returning seq, created_at
        """,
        {
            "run": run_id,
            "count": len(events),
            "items": json.dumps([[name, data] for name, data in events], default=str),
        },
    ).fetchall()
    if not rows:
        raise LookupError(f"run {run_id} does not exist")
    stored = sorted(rows, key=lambda row: row["seq"])
    return [
        RunEvent(run_id=run_id, seq=row["seq"], event=name, data=data, ts=row["created_at"])
        for row, (name, data) in zip(stored, events, strict=True)
    ]


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

    def publish_messages(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish (topic, envelope) pairs that are not run events (notifications, analytics
        signals); best effort like publish."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for topic, envelope in messages:
                    pipe.publish(topic_channel(topic), json.dumps(envelope, default=str))
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("event_publish_failed", error=str(exc), count=len(messages))

    @contextmanager
    def subscription(self, topic: str) -> Iterator[redis.client.PubSub | None]:
        """A subscription to a topic's events, or None while Redis is unreachable."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
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
