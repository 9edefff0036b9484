"""One open websocket's session: its subscriptions, replay from Postgres, snapshots, and the
single writer of its frames (web/ws.py accepts the socket and hands it here)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from simple_websocket import ConnectionClosed
from wsproto.events import Ping as PingFrame

from conveyor.auth.tenancy import has_admin_role
from conveyor.auth.tokens import Principal
from conveyor.db import Database
from conveyor.errors import ConveyorError, RunNotFound
from conveyor.events import notifications
from conveyor.runs import views
from web.realtime import ANALYTICS_KEY, Delivery, Hub, Kind, Outbox
from web.realtime_protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    Channel,
    Heartbeat,
    Ping,
    ProtocolError,
    Subscribe,
    Subscription,
    Topic,
    Unsubscribe,
    active_runs_snapshot,
    analytics_messages,
    analytics_subscription,
    heartbeat_ack,
    notifications_snapshot,
    parse_client_message,
    parse_topic,
    run_snapshot,
    start_own_channel,
    typed_key,
    typed_message,
)

log = structlog.get_logger(__name__)

REPLAY_PAGE = 500
# A socket's thread wakes at least this often even when nothing happens (token expiry checks).
IDLE_WAKE_SECONDS = 30.0
MAX_CLOSE_REASON = 120  # the protocol allows 123 bytes


@dataclass(eq=False)  # hashed by identity: the hub keeps sessions in sets
class SocketSession:
    """One open websocket: its caller, its subscriptions and its outbox."""

    ws: Any  # simple_websocket.Server
    principal: Principal
    channel: Channel
    db: Database
    hub: Hub
    outbox: Outbox
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # Held by whoever writes to the socket: this socket's thread (blocking) or the hub (only when
    # free, see offer), so frames never interleave and seqs go out in order.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # The rest of a frame the hub could only partly write; it goes out before anything else.
    pending: bytes = b""
    # Set by the hub when the server stops; the socket's own thread sends the close frame.
    leaving: str | None = None
    _admin: bool | None = None

    @property
    def claims(self) -> dict[str, Any]:
        """The claims RLS sees for this caller."""
        return self.principal.rls_claims()

    def offer(self, item: Delivery) -> bool:
        """Called by the hub's thread: write a live event now if nothing else is being written or
        waits in the outbox, without blocking; False leaves it for this socket's thread."""
        if item.frame is None or not self.write_lock.acquire(blocking=False):
            return False
        try:
            sock = self.ws.sock
            if self.pending or not self.outbox.empty() or not self.ws.connected:
                return False
            if sock.gettimeout() is not None:
                return False  # a send on a socket with a timeout could wait
            subscription = self.subscriptions.get(item.key)
            if subscription is None or (item.seq and item.seq <= subscription.last_seq):
                return True  # unsubscribed, or already sent
            try:
                sent = sock.send(item.frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True  # the connection is gone; the reader thread notices
            if sent < len(item.frame):
                self.pending = item.frame[sent:]
                self.ws.event.set()
            if item.seq:
                subscription.last_seq = item.seq
            return True
        finally:
            self.write_lock.release()

    def abort(self) -> None:
        """Cut off a socket whose client stopped reading (called by the hub's thread)."""
        with contextlib.suppress(OSError):
            self.ws.sock.shutdown(socket.SHUT_RDWR)

    def serve(self, ping_seconds: float) -> None:
        """Follow the user's own channel, then handle client messages and deliveries until the
        socket closes."""
        with self.write_lock:
            self.follow_own_channel()
        expires_at = self.principal.claims.get("exp")
        next_ping = time.monotonic() + ping_seconds
        while self.ws.connected:
            wait = min(IDLE_WAKE_SECONDS, max(0.0, next_ping - time.monotonic()))
            if isinstance(expires_at, int | float):
                wait = max(0.0, min(wait, expires_at - time.time()))
            self.ws.event.wait(timeout=wait)
            self.ws.event.clear()
            if not self.ws.connected:
                return
            with self.write_lock:
                if not self.step(expires_at, ping_due=time.monotonic() >= next_ping):
                    return
            if time.monotonic() >= next_ping:
                next_ping = time.monotonic() + ping_seconds

    def step(self, expires_at: object, *, ping_due: bool) -> bool:
        """One turn of the socket's thread, holding the write lock; False once it closed."""
        if self.leaving is not None:
            self.close(CLOSE_GOING_AWAY, self.leaving)
            return False
        if self.pending:  # the rest of a frame the hub began goes out before anything else
            self.ws.sock.sendall(self.pending)
            self.pending = b""
        if isinstance(expires_at, int | float) and time.time() >= expires_at:
            self.close(CLOSE_TOKEN_EXPIRED, "The access token expired; refresh it, reconnect.")
            return False
        if ping_due and not self.ping():
            self.close(CLOSE_GOING_AWAY, "No pong to the last ping; reconnect with `since`.")
            return False
        # simple-websocket's reader thread appends client messages here and sets ws.event, the
        # same event the hub sets: one wait covers both sources.
        while self.ws.input_buffer:
            self.handle(self.ws.input_buffer.pop(0))
        for item in self.outbox.take():
            if self.outbox.overflowed_at is not None:
                break
            self.deliver(item)
        if self.outbox.overflowed_at is not None:
            self.close(
                CLOSE_TRY_AGAIN_LATER,
                f"Too slow: over {self.outbox.limit} messages waiting; reconnect with `since`.",
            )
            return False
        return True

    def ping(self) -> bool:
        """Send a ping frame; False if the previous one was never answered.
        This thread pings rather than simple-websocket's reader thread, so frames are written by
        one thread only (two writers can interleave a ping into a large frame under backpressure).
        """
        if not self.ws.pong_received:
            return False
        self.ws.pong_received = False
        self.ws.sock.send(self.ws.ws.send(PingFrame()))
        return True

    def close(self, code: int, reason: str) -> None:
        """Close with code and a reason the client can act on."""
        with contextlib.suppress(ConnectionClosed, OSError):
            self.ws.close(reason=code, message=reason[:MAX_CLOSE_REASON])

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message."""
        self.ws.send(json.dumps(message, default=str))

    def handle(self, text: object) -> None:
        """Answer one client message; refusals are error messages, not closes."""
        try:
            message = parse_client_message(text)
            if isinstance(message, Ping):
                self.send({"type": "pong"})
            elif isinstance(message, Heartbeat):
                self.send(heartbeat_ack(message))
            elif isinstance(message, Unsubscribe):
                self.unsubscribe(parse_topic(self.channel, message.topic))
            elif isinstance(message, Subscribe):
                self.subscribe(message)
        except ProtocolError as exc:
            self.send(exc.to_message())
        except ConveyorError as exc:  # Postgres unreachable, say
            self.send({"type": "error", "code": exc.code, "message": exc.message})

    def follow_own_channel(self) -> None:
        """From connect until the first subscribe, follow the user's own channel in seed 001's
        typed messages (docs/realtime.md); called holding the write lock, so the hub queues
        whatever it delivers meanwhile until `last_seq` is known."""
        user = self.principal.user_id
        if user is None:
            return
        key = typed_key(self.channel, user)
        subscription = Subscription(Topic(f"user:{user}", "user", user), typed=True)
        self.subscriptions[key] = subscription
        self.hub.subscribe(self, ANALYTICS_KEY if self.channel == "analytics" else key)
        try:
            start_own_channel(self.db, self.claims, self.channel, subscription)
        except ConveyorError as exc:
            self.stop_following_own_channel()
            self.send({"type": "error", "code": exc.code, "message": exc.message})

    def stop_following_own_channel(self) -> None:
        """The client subscribes itself from now on (or unsubscribed its user topic)."""
        for key in [k for k, sub in self.subscriptions.items() if sub.typed]:
            self.subscriptions.pop(key, None)
            if self.channel != "analytics":
                self.hub.unsubscribe(self, key)
            elif not self.subscriptions:
                self.hub.unsubscribe(self, ANALYTICS_KEY)

    def subscribe(self, message: Subscribe) -> None:
        """Follow a topic: snapshot (or replay after `since`) first, then live."""
        topic = parse_topic(self.channel, message.topic)
        if topic.kind == "user" and not self.may_read_user(topic):
            raise ProtocolError(
                "UNAUTHORIZED", "You may follow only your own user topic.", topic.name
            )
        self.stop_following_own_channel()
        if topic.kind == "analytics":
            self.subscribe_analytics(topic, message.params)
            return
        assert topic.target is not None
        key = topic.key(self.channel)
        # Register with the hub before reading Postgres: whatever commits after the read is
        # published after it too, so it reaches the outbox; older seqs are dropped on delivery.
        self.hub.subscribe(self, key)
        try:
            if topic.kind == "workflow_run":
                self.start_run(key, topic, message.since)
            elif self.channel == "notifications":
                self.start_notifications(key, topic, message.since)
            else:
                self.subscriptions[key] = Subscription(topic)
                self.send({"type": "subscribed", "topic": topic.name})
                for snapshot in active_runs_snapshot(self.db, self.claims, topic.target):
                    self.send(snapshot)
        except BaseException:
            self.hub.unsubscribe(self, key)
            self.subscriptions.pop(key, None)
            raise

    def start_run(self, key: str, topic: Topic, since: int | None) -> None:
        assert topic.target is not None
        refused = ProtocolError(
            "UNAUTHORIZED", "That run does not exist or is not yours.", topic.name
        )
        if since is None:
            snapshot = run_snapshot(self.db, self.claims, topic.target)
            if snapshot is None:
                raise refused
            self.subscriptions[key] = Subscription(topic, last_seq=snapshot["seq"])
            self.send({"type": "subscribed", "topic": topic.name})
            self.send(snapshot)
            return
        try:
            views.require_visible(self.db, self.claims, topic.target)
        except RunNotFound:
            raise refused from None
        subscription = Subscription(topic, last_seq=since)
        self.subscriptions[key] = subscription
        self.send({"type": "subscribed", "topic": topic.name, "since": since})
        self.replay_run(subscription)

    def replay_run(self, subscription: Subscription) -> None:
        """Send the run's events after the subscription's last seq, from Postgres."""
        assert subscription.topic.target is not None
        while True:
            events = views.list_events(
                self.db,
                self.claims,
                subscription.topic.target,
                since=subscription.last_seq,
                limit=REPLAY_PAGE,
            )
            for event in events:
                self.send(event.envelope())
                subscription.last_seq = event.seq
            if len(events) < REPLAY_PAGE:
                return

    def start_notifications(self, key: str, topic: Topic, since: int | None) -> None:
        assert topic.target is not None
        if since is not None:
            subscription = Subscription(topic, last_seq=since)
            self.subscriptions[key] = subscription
            self.send({"type": "subscribed", "topic": topic.name, "since": since})
            self.replay_notifications(subscription)
            return
        last = notifications.last_seq(self.db, self.claims, topic.target)
        self.subscriptions[key] = Subscription(topic, last_seq=last)
        self.send({"type": "subscribed", "topic": topic.name})
        self.send(notifications_snapshot(self.db, self.claims, topic, last))

    def replay_notifications(self, subscription: Subscription) -> None:
        """Send the user's notifications after the subscription's last seq, from Postgres."""
        assert subscription.topic.target is not None
        while True:
            notes = notifications.notifications_since(
                self.db,
                self.claims,
                subscription.topic.target,
                subscription.last_seq,
                limit=REPLAY_PAGE,
            )
            for note in notes:
                envelope = note.envelope()
                self.send(typed_message(envelope) if subscription.typed else envelope)
                subscription.last_seq = note.seq
            if len(notes) < REPLAY_PAGE:
                return

    def subscribe_analytics(self, topic: Topic, params: dict[str, Any]) -> None:
        subscription = analytics_subscription(topic, params)
        self.subscriptions[topic.key(self.channel)] = subscription
        self.hub.subscribe(self, ANALYTICS_KEY)
        self.send({"type": "subscribed", "topic": topic.name})
        self.send_analytics(subscription)

    def send_analytics(self, subscription: Subscription) -> None:
        """Compute and send one analytics update (admins: everyone's figures)."""
        scope = None if self.is_admin() else self.principal.user_id
        for message in analytics_messages(self.db, self.claims, subscription, scope):
            self.send(message)

    def unsubscribe(self, topic: Topic) -> None:
        """Stop following a topic (unknown ones are acknowledged too)."""
        key = topic.key(self.channel)
        self.subscriptions.pop(key, None)
        if topic.kind == "user" and topic.target == self.principal.user_id:
            self.stop_following_own_channel()
        if topic.kind != "analytics":
            self.hub.unsubscribe(self, key)
        elif not self.subscriptions:
            self.hub.unsubscribe(self, ANALYTICS_KEY)
        self.send({"type": "unsubscribed", "topic": topic.name})

    def deliver(self, item: Delivery) -> None:
        """Act on one delivery from the hub."""
        if item.kind is Kind.MESSAGE:
            subscription = self.subscriptions.get(item.key)
            if subscription is None or (item.seq and item.seq <= subscription.last_seq):
                return  # unsubscribed meanwhile, or already sent by a replay
            self.ws.send(item.text)
            if item.seq:
                subscription.last_seq = item.seq
        elif item.kind is Kind.CATCH_UP:
            subscription = self.subscriptions.get(item.key)
            if subscription is not None:
                self.replay_notifications(subscription)
        elif item.kind is Kind.REFRESH:
            for subscription in list(self.subscriptions.values()):
                self.send_analytics(subscription)
        elif item.kind is Kind.RESYNC:
            self.resync()

    def resync(self) -> None:
        """After the hub lost Redis for a while: catch every subscription up from Postgres."""
        for subscription in list(self.subscriptions.values()):
            if subscription.topic.kind == "workflow_run":
                self.replay_run(subscription)
            elif self.channel == "notifications":  # the user topic, subscribed or typed
                self.replay_notifications(subscription)
            elif subscription.topic.kind == "analytics":
                self.send_analytics(subscription)

    def may_read_user(self, topic: Topic) -> bool:
        """Own user topic, or any for an admin."""
        return topic.target == self.principal.user_id or self.is_admin()

    def is_admin(self) -> bool:
        """Admin by token claim or by user_roles (looked up once per socket)."""
        if self._admin is None:
            user = self.principal.user_id
            self._admin = self.principal.is_admin or (
                user is not None and has_admin_role(self.db, user)
            )
        return self._admin
