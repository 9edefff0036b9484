"""The websocket protocol: client messages, topics per channel, close codes, and the event
envelopes the server builds itself (snapshots). docs/realtime.md describes it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from conveyor.db import Database
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE
from conveyor.ops import analytics, analytics_events
from conveyor.runs.store import status_data

Channel = Literal["workflows", "notifications", "analytics"]
RECENT_NOTIFICATIONS = 20
ANALYTICS_TOPICS = frozenset(
    {"lead_trends", "conversation_trends", "usage_trends", "run_stats", "revenue"}
)
# Seed 001's analytics params: with any of them (or on conversation_trends, a topic only its
# clients know) an update's `data` is the document's `[{date, value}]`, not Conveyor's object.
SEED_ANALYTICS_PARAMS = ("start_date", "end_date", "aggregation")
SEED_ANALYTICS_TOPICS = frozenset({"conversation_trends"})
# Until its first subscribe, a socket follows its user's own channel as seed 001's first
# protocol does (run status updates, notifications), each with the event's name as the message
# `type` (typed_message); these hub keys carry that stream.
TYPED_KEY_PREFIX = "typed|"

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOKEN_EXPIRED = 4001


class ProtocolError(Exception):
    """A client message the server refuses; the connection stays open."""

    def __init__(self, code: str, message: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.topic = topic

    def to_message(self) -> dict[str, Any]:
        """The `{"type": "error"}` message the client receives."""
        body: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.topic is not None:
            body["topic"] = self.topic
        return body


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Subscribe(_ClientMessage):
    """Start receiving a topic; with `since`, first everything after that seq."""

    type: Literal["subscribe"]
    topic: str = Field(min_length=1, max_length=200)
    since: int | None = Field(default=None, ge=0, le=2**62)
    params: dict[str, Any] = Field(default_factory=dict)


class Unsubscribe(_ClientMessage):
    """Stop receiving a topic."""

    type: Literal["unsubscribe"]
    topic: str = Field(min_length=1, max_length=200)


class Ping(_ClientMessage):
    """Answered with a pong."""

    type: Literal["ping"]


class Heartbeat(_ClientMessage):
    """A client's keep-alive, answered with the server's time."""

    type: Literal["heartbeat"]
    timestamp: Any = None


ClientMessage = Annotated[Subscribe | Unsubscribe | Ping | Heartbeat, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def parse_client_message(text: object) -> ClientMessage:
    """A client message, or ProtocolError BAD_REQUEST saying what is wrong with it."""
    if not isinstance(text, str):
        raise ProtocolError("BAD_REQUEST", "Send JSON text messages, not binary ones.")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("BAD_REQUEST", f"The message is not valid JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise ProtocolError("BAD_REQUEST", "A message is a JSON object with a `type`.")
    try:
        return _CLIENT_MESSAGE.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ProtocolError(
            "BAD_REQUEST",
            "Invalid message (types: subscribe, unsubscribe, ping, heartbeat): " + problems,
        ) from None


@dataclass(frozen=True)
class Topic:
    """A topic a socket may subscribe to on its channel."""

    name: str
    kind: Literal["workflow_run", "user", "analytics"]
    target: UUID | None = None

    def key(self, channel: Channel) -> str:
        """The hub's subscription key: the same topic means different streams per channel."""
        return f"{channel}|{self.name}"


def parse_topic(channel: Channel, raw: str) -> Topic:
    """The topic named by raw on channel, or ProtocolError INVALID_TOPIC listing valid ones."""
    prefix, _, rest = raw.partition(":")
    if channel == "analytics":
        if raw in ANALYTICS_TOPICS:
            return Topic(raw, "analytics")
        valid = ", ".join(sorted(ANALYTICS_TOPICS))
        raise ProtocolError("INVALID_TOPIC", f"Unknown analytics topic; use one of {valid}.", raw)
    kinds = {"workflows": ("workflow_run", "user"), "notifications": ("user",)}[channel]
    if prefix in kinds and rest:
        try:
            return Topic(f"{prefix}:{UUID(rest)}", prefix, UUID(rest))  # type: ignore[arg-type]
        except ValueError:
            pass
    shapes = " or ".join(f"`{kind}:<uuid>`" for kind in kinds)
    raise ProtocolError("INVALID_TOPIC", f"Topics on /api/ws/{channel} are {shapes}.", raw)


def typed_key(channel: Channel, user_id: UUID) -> str:
    """The hub key of a socket's own-user stream in the typed shape."""
    return f"{TYPED_KEY_PREFIX}{channel}|user:{user_id}"


def typed_message(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope as seed 001's typed message: `type` is the event's name (`event_type` too,
    as PixelCraft's frontend reads it); every envelope field but `type` is kept."""
    return {"type": envelope["event"], "event_type": envelope["event"]} | {
        key: value for key, value in envelope.items() if key != "type"
    }


def event_message(
    channel: Channel, topic: str, seq: int, event: str, data: Any, **extra: Any
) -> dict[str, Any]:
    """An event envelope built here (snapshots, analytics), shaped like published ones."""
    return {
        "type": "event",
        "channel": channel,
        "topic": topic,
        "seq": seq,
        "event": event,
        "data": data,
        "ts": datetime.now(UTC).isoformat(),
        **extra,
    }


def run_snapshot(db: Database, claims: dict[str, Any], run_id: UUID) -> dict[str, Any] | None:
    """The run's current status as a `workflow_status_update` numbered with its last event's
    seq, or None when the caller may not see the run (RLS)."""
    with db.user_transaction(claims) as conn:
        row = conn.execute("select * from workflow_runs where id = %s", (run_id,)).fetchone()
    if row is None:
        return None
    message = event_message(
        "workflows",
        f"workflow_run:{run_id}",
        row["last_event_seq"],
        STATUS_UPDATE,
        status_data(row),
        snapshot=True,
    )
    message["ts"] = row["updated_at"].isoformat()
    return message


def active_runs_snapshot(
    db: Database, claims: dict[str, Any], user_id: UUID, *, limit: int = 100
) -> list[dict[str, Any]]:
    """Status snapshots of the user's unfinished runs (a `user:` subscription): those queued or
    running first, then those waiting, each oldest first; each half reads a partial index."""
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            "select * from ("
            " (select * from workflow_runs where user_id = %(user)s "
            "  and status in ('queued', 'running') order by created_at limit %(limit)s) "
            " union all "
            " (select * from workflow_runs where user_id = %(user)s and status = 'waiting' "
            "  order by created_at limit %(limit)s)) unfinished "
            "order by status = 'waiting', created_at limit %(limit)s",
            {"user": user_id, "limit": limit},
        ).fetchall()
    return [
        event_message(
            "workflows",
            f"workflow_run:{row['id']}",
            row["last_event_seq"],
            STATUS_UPDATE,
            status_data(row),
            snapshot=True,
        )
        for row in rows
    ]


def notifications_snapshot(
    db: Database, claims: dict[str, Any], topic: Topic, last: int
) -> dict[str, Any]:
    """A `user:` subscription's first message on notifications: the unread count and the
    newest unread notifications, numbered with the user's last seq."""
    assert topic.target is not None
    recent, _ = notifications.list_notifications(
        db, claims, user_id=topic.target, unread=True, limit=RECENT_NOTIFICATIONS, cursor=None
    )
    data = {
        "unread_count": notifications.unread_count(db, claims, topic.target),
        "notifications": [note.view() for note in recent],
    }
    return event_message(
        "notifications", topic.name, last, "notification_snapshot", data, snapshot=True
    )


@dataclass
class Subscription:
    """One topic a socket follows and the last seq it sent on it."""

    topic: Topic
    last_seq: int = 0
    days: int = 30
    # Seed 001's analytics params (start_date, end_date, aggregation): its `[{date, value}]` form.
    window: dict[str, Any] | None = None
    # The own-user stream followed from connect, sent as typed messages.
    typed: bool = False
    # On analytics, that stream's next window of typed events starts here (analytics_events).
    since: datetime | None = None


def analytics_subscription(topic: Topic, params: dict[str, Any]) -> Subscription:
    """A subscription to an analytics topic with its validated params: seed 001's window
    (`start_date`, `end_date`, `aggregation`) or Conveyor's `days`; BAD_REQUEST if invalid."""
    window = {key: params[key] for key in SEED_ANALYTICS_PARAMS if key in params}
    if window or topic.name in SEED_ANALYTICS_TOPICS:
        try:
            analytics.TrendsQuery.model_validate({"topic": topic.name, **window})
        except ValidationError as exc:
            problems = "; ".join(err["msg"] for err in exc.errors(include_url=False))
            raise ProtocolError("BAD_REQUEST", f"Invalid params: {problems}.", topic.name) from None
        return Subscription(topic, window=window)
    days = params.get("days", 30)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365:
        raise ProtocolError("BAD_REQUEST", "params.days must be an integer 1..365.", topic.name)
    return Subscription(topic, days=days)


def start_own_channel(
    db: Database, claims: dict[str, Any], channel: Channel, subscription: Subscription
) -> None:
    """Where the typed stream of a socket's own channel starts: live from now (what is older is
    in the REST API)."""
    assert subscription.topic.target is not None
    if channel == "notifications":
        subscription.last_seq = notifications.last_seq(db, claims, subscription.topic.target)
    elif channel == "analytics":
        subscription.since = analytics_events.start(db)


def analytics_messages(
    db: Database, claims: dict[str, Any], subscription: Subscription, user_id: UUID | None
) -> list[dict[str, Any]]:
    """What a subscription sends on a roll-up tick (user_id None: everyone's figures): an
    `analytics_update`, or for the typed stream followed from connect the seed 001 events since
    the last tick. In seed 001's form `data` is the series and the rest of the trend sits beside
    it."""
    name = subscription.topic.name
    if subscription.typed:
        assert subscription.since is not None
        found, subscription.since = analytics_events.events_since(
            db, claims, subscription.since, user_id=user_id
        )
        messages = []
        for event, data in found:
            subscription.last_seq += 1
            envelope = event_message("analytics", name, subscription.last_seq, event, data)
            messages.append(typed_message(envelope))
        return messages
    subscription.last_seq += 1
    if subscription.window is None:
        data = analytics.topic_update(db, claims, name, days=subscription.days, user_id=user_id)
        return [event_message("analytics", name, subscription.last_seq, "analytics_update", data)]
    # Validated at subscribe; an open end_date is now, so each push moves the window on, and
    # past the most buckets a trend spans it keeps the newest ones rather than failing.
    try:
        query = analytics.TrendsQuery.model_validate({"topic": name, **subscription.window})
    except ValidationError:
        window = analytics.newest_window(subscription.window)
        query = analytics.TrendsQuery.model_validate({"topic": name, **window})
    trend = analytics.trends(db, claims, query, user_id=user_id)
    series = trend.pop("series")
    return [
        event_message("analytics", name, subscription.last_seq, "analytics_update", series, **trend)
    ]


def heartbeat_ack(message: Heartbeat) -> dict[str, Any]:
    """The answer to a client's heartbeat: its timestamp back, and the server's time."""
    return {
        "type": "heartbeat_ack",
        "timestamp": message.timestamp,
        "server_time": datetime.now(UTC).isoformat(),
    }
