"""Fan-out of Redis events to this process's websockets: one subscriber thread per process and a
bounded outbox per socket (status updates coalesced). The messages are realtime_protocol's.

The hub pattern-subscribes to every event channel once, before the first socket is served, so a
socket that registers a topic and then reads Postgres misses nothing published after the read.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis
import structlog

from conveyor.constants import EVENTS_CHANNEL_PREFIX
from conveyor.events.run_events import STATUS_UPDATE
from conveyor.ledger.usage import QUOTA_THRESHOLD_CROSSED
from conveyor.ops.analytics import ANALYTICS_SIGNAL
from web.realtime_protocol import TYPED_KEY_PREFIX, typed_message

log = structlog.get_logger(__name__)

ANALYTICS_KEY = "analytics|signal"
EVENTS_PATTERN = f"{EVENTS_CHANNEL_PREFIX}*"
USER_KEY_PREFIXES = (
    "workflows|user:",
    "notifications|user:",
    f"{TYPED_KEY_PREFIX}workflows|user:",
    f"{TYPED_KEY_PREFIX}notifications|user:",
)
# Run states a later status update makes obsolete; final ones are never coalesced away.
COALESCIBLE_STATUSES = frozenset({"queued", "running"})
# Run events after which the user has a new notification to read (see notifications.py).
NOTIFYING_STATUSES = frozenset({"completed", "failed"})


class Kind(StrEnum):
    """What a delivery asks the socket to do."""

    MESSAGE = "message"  # send `text` (a published envelope)
    CATCH_UP = "catch_up"  # read what is new from Postgres (notifications after a run event)
    REFRESH = "refresh"  # recompute analytics
    RESYNC = "resync"  # the hub reconnected to Redis: replay every subscription from Postgres


@dataclass(frozen=True, slots=True)
class Delivery:
    """One item of a socket's outbox."""

    key: str
    kind: Kind
    seq: int = 0  # 0: not deduplicated by seq
    text: str = ""
    # Deliveries with the same key and coalesce_id replace each other while unsent.
    coalesce_id: str | None = None
    # `text` as a websocket frame, built once for every socket (None: sockets encode it).
    frame: bytes | None = None


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame carrying payload (UTF-8): what a server sends
    when no extension was negotiated, the same bytes for every socket."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Wakeup(Protocol):
    """What the socket's thread waits on (simple-websocket's per-connection event)."""

    def set(self) -> None: ...


class Outbox:
    """A socket's bounded queue of deliveries; overflowing it marks the socket for closing."""

    def __init__(self, limit: int, wakeup: Wakeup) -> None:
        self.limit = limit
        self.wakeup = wakeup
        self.overflowed_at: float | None = None
        self.coalesced = 0
        self._items: deque[Delivery] = deque()
        self._lock = threading.Lock()

    def put(self, item: Delivery) -> bool:
        """Queue item (replacing an unsent one it supersedes); False once the socket overflowed."""
        with self._lock:
            if self.overflowed_at is not None:
                return False
            if item.coalesce_id is not None:
                self._drop_superseded(item)
            if len(self._items) >= self.limit:
                self.overflowed_at = time.monotonic()
                self._items.clear()
            else:
                self._items.append(item)
        self.wakeup.set()
        return self.overflowed_at is None

    def _drop_superseded(self, item: Delivery) -> None:
        # Newest first: a superseded update, if any, is usually near the end.
        for index in range(len(self._items) - 1, -1, -1):
            queued = self._items[index]
            if queued.key == item.key and queued.coalesce_id == item.coalesce_id:
                del self._items[index]
                self.coalesced += 1
                return

    def empty(self) -> bool:
        """Nothing queued and not overflowed."""
        return not self._items and self.overflowed_at is None

    def take(self) -> list[Delivery]:
        """Everything queued, oldest first, leaving the outbox empty."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


class Listener(Protocol):
    """A socket as the hub sees it."""

    outbox: Outbox
    # Set (with the outbox's wakeup) when the server stops: the socket closes itself with 1001.
    leaving: str | None

    def offer(self, item: Delivery) -> bool:
        """Write item at once if the socket is idle, without blocking; False: queue it."""

    def abort(self) -> None:
        """Cut the connection off without a close handshake (it stopped reading)."""


class Hub:
    """This process's one Redis subscriber, dispatching events to the sockets that want them."""

    def __init__(
        self, redis_url: str, *, send_grace_seconds: float = 5.0, shared_frames: bool = True
    ) -> None:
        self._redis_url = redis_url
        self._send_grace = send_grace_seconds
        # Frames are the same bytes for every socket only when none negotiated compression.
        self._shared_frames = shared_frames
        self._lock = threading.Lock()
        # Copy-on-write: the hub thread reads these without the lock.
        self._subscribers: dict[str, frozenset[Listener]] = {}
        self._listeners: frozenset[Listener] = frozenset()
        # Keys that need a run event's user (user streams, notification nudges): while there are
        # none, run events without a socket of their own are dropped unparsed.
        self._user_keys = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        # Deliveries, and how many of them the hub wrote itself (the rest went through outboxes).
        self.delivered = 0
        self.written = 0

    def ensure_started(self, timeout: float = 5.0) -> bool:
        """Start the subscriber thread in this process (once); True once it listens on Redis."""
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                    self._pid = os.getpid()
                    self._ready.clear()
                    self._stop.clear()
                    self._thread = threading.Thread(
                        target=self._run, name="conveyor-realtime-hub", daemon=True
                    )
                    self._thread.start()
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop the subscriber thread (tests, shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close_all(self, reason: str) -> None:
        """Ask every socket of this process to close with 1001: the server is stopping."""
        for listener in self._listeners:
            listener.leaving = reason
            listener.outbox.wakeup.set()

    def socket_count(self) -> int:
        """How many sockets this process serves."""
        return len(self._listeners)

    def attach(self, listener: Listener) -> None:
        """A new socket: it hears about Redis reconnects from now on."""
        with self._lock:
            self._listeners = self._listeners | {listener}

    def detach(self, listener: Listener) -> None:
        """A closed socket: forget it and all its subscriptions."""
        with self._lock:
            self._listeners = self._listeners - {listener}
            for key, members in list(self._subscribers.items()):
                if listener in members:
                    self._set_members(key, members - {listener})

    def subscribe(self, listener: Listener, key: str) -> None:
        """Deliver key's events to listener from now on."""
        with self._lock:
            self._set_members(key, self._subscribers.get(key, frozenset()) | {listener})

    def unsubscribe(self, listener: Listener, key: str) -> None:
        """Stop delivering key's events to listener."""
        with self._lock:
            self._set_members(key, self._subscribers.get(key, frozenset()) - {listener})

    def _set_members(self, key: str, members: frozenset[Listener]) -> None:
        existed = key in self._subscribers
        if members:
            self._subscribers[key] = members
        else:
            self._subscribers.pop(key, None)
        if key.startswith(USER_KEY_PREFIXES) and existed != bool(members):
            self._user_keys += 1 if members else -1

    def _run(self) -> None:
        backoff = 0.1
        first = True
        while not self._stop.is_set():
            client = redis.Redis.from_url(
                self._redis_url, socket_connect_timeout=2, socket_keepalive=True
            )
            pubsub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
            try:
                pubsub.psubscribe(EVENTS_PATTERN)
                self._await_confirmation(pubsub)
                if not first:
                    # Whatever was published while we were away is in Postgres: replay it.
                    self._broadcast(self._listeners, Kind.RESYNC)
                first, backoff = False, 0.1
                self._ready.set()
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("realtime_hub_disconnected", error=str(exc))
            finally:
                self._ready.clear()
                pubsub.close()
                client.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    @staticmethod
    def _await_confirmation(pubsub: redis.client.PubSub) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "psubscribe":
                return
        raise redis.ConnectionError("no psubscribe confirmation within 5 s")

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        next_sweep = time.monotonic() + 1
        while not self._stop.is_set():
            # A short timeout only bounds how long stop() waits; messages end the wait at once.
            message = pubsub.get_message(timeout=0.25)
            if message is not None and message["type"] == "pmessage":
                try:
                    self.dispatch(message["channel"], message["data"])
                except Exception:  # a malformed message must not stop every socket's stream
                    log.exception("realtime_dispatch_failed", channel=str(message["channel"]))
            now = time.monotonic()
            if now >= next_sweep:
                self._cut_off_stuck(now)
                next_sweep = now + 1

    def dispatch(self, channel: bytes, data: bytes) -> None:
        """Route one published message to the outboxes that want it."""
        topic = channel.decode()[len(EVENTS_CHANNEL_PREFIX) :]
        subscribers = self._subscribers
        if topic.startswith("workflow_run:"):
            self._dispatch_run_event(topic, data, subscribers)
        elif topic.startswith("user:"):
            key = f"notifications|{topic}"
            listeners = subscribers.get(key)
            typed_key = f"{TYPED_KEY_PREFIX}{key}"
            typed_listeners = subscribers.get(typed_key)
            if not listeners and not typed_listeners:
                return
            envelope = json.loads(data)
            seq = int(envelope["seq"])
            if listeners:
                self._deliver(
                    listeners,
                    Delivery(key, Kind.MESSAGE, seq, data.decode(), frame=self._frame(data)),
                )
            if typed_listeners:
                self._deliver(typed_listeners, self._typed(typed_key, envelope, seq, None))
        elif topic == ANALYTICS_SIGNAL:
            self._broadcast(subscribers.get(ANALYTICS_KEY, frozenset()), Kind.REFRESH)

    def _dispatch_run_event(
        self, topic: str, data: bytes, subscribers: dict[str, frozenset[Listener]]
    ) -> None:
        run_key = f"workflows|{topic}"
        listeners = subscribers.get(run_key)
        # The JSON is parsed only when this process has a socket that cares.
        if not listeners and not self._user_keys:
            return
        envelope = json.loads(data)
        text = data.decode()
        frame = self._frame(data)
        status = envelope["data"].get("status") if envelope["event"] == STATUS_UPDATE else None
        coalesce = topic if status in COALESCIBLE_STATUSES else None
        if listeners:
            self._deliver(
                listeners, Delivery(run_key, Kind.MESSAGE, envelope["seq"], text, coalesce, frame)
            )
        user = envelope["data"].get("user_id")
        if user is None:
            return
        if status is not None:
            user_key = f"workflows|user:{user}"
            if user_key in subscribers:
                self._deliver(
                    subscribers[user_key],
                    Delivery(user_key, Kind.MESSAGE, 0, text, coalesce, frame),
                )
            typed_key = f"{TYPED_KEY_PREFIX}{user_key}"
            if typed_key in subscribers:
                typed = self._typed(typed_key, envelope, 0, coalesce)
                self._deliver(subscribers[typed_key], typed)
        if status in NOTIFYING_STATUSES or envelope["event"] == QUOTA_THRESHOLD_CROSSED:
            note_key = f"notifications|user:{user}"
            for key in (note_key, f"{TYPED_KEY_PREFIX}{note_key}"):
                if key in subscribers:
                    self._broadcast(subscribers[key], Kind.CATCH_UP, key)

    def _typed(
        self, key: str, envelope: dict[str, Any], seq: int, coalesce: str | None
    ) -> Delivery:
        """The delivery of an envelope as seed 001's typed message (sockets following their own
        channel from connect)."""
        data = json.dumps(typed_message(envelope)).encode()
        return Delivery(key, Kind.MESSAGE, seq, data.decode(), coalesce, self._frame(data))

    def _frame(self, data: bytes) -> bytes | None:
        return text_frame(data) if self._shared_frames else None

    def _deliver(self, listeners: Iterable[Listener], item: Delivery) -> None:
        for listener in listeners:
            # An idle socket is written to from here: no wake-up of its thread per message.
            if item.frame is not None and listener.offer(item):
                self.written += 1
            else:
                listener.outbox.put(item)
            self.delivered += 1

    def _broadcast(self, listeners: Iterable[Listener], kind: Kind, key: str = "") -> None:
        self._deliver(listeners, Delivery(key, kind))

    def _cut_off_stuck(self, now: float) -> None:
        for listener in self._listeners:
            overflowed = listener.outbox.overflowed_at
            if overflowed is not None and now - overflowed > self._send_grace:
                log.warning("realtime_socket_cut_off", reason="stuck writing after overflow")
                listener.abort()
