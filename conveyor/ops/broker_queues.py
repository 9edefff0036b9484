"""Messages waiting in each Celery queue, read from the broker in use: Redis lists, or RabbitMQ
queues (a passive declare answers a queue's ready messages). For `/metrics`,
`/api/admin/queues` and `conveyor status`."""

from __future__ import annotations

import threading
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

import amqp
import redis

from conveyor.constants import QUEUES, RABBITMQ_SCHEMES

# kombu's Redis transport keeps delivered-but-unacked messages in this hash (all queues).
UNACKED_KEY = "unacked"
AMQP_PORT, AMQPS_PORT = 5672, 5671
# RabbitMQ's reply code for a queue that does not exist (no worker has declared it yet).
NOT_FOUND = 404

Broker = Literal["redis", "rabbitmq"]


class BrokerUnreachable(Exception):
    """The broker did not answer."""


class QueueReader(Protocol):
    """What an operator's view reads of the broker."""

    broker: Broker

    def depths(self) -> dict[str, int]:
        """Messages waiting in each queue; BrokerUnreachable when the broker does not answer."""
        ...

    def unacked(self) -> int | None:
        """Messages delivered to workers and not yet acknowledged; None when the broker does not
        say (RabbitMQ tells only its management API)."""
        ...

    def close(self) -> None:
        """Let go of connections."""
        ...


class RedisQueueReader:
    """Queues as kombu keeps them in Redis: a list per queue and one hash of unacked messages."""

    broker: Broker = "redis"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def depths(self) -> dict[str, int]:
        """Each queue's list length, in one round trip."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in QUEUES:
                    pipe.llen(queue)
                depths = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnreachable(f"Redis is unreachable ({exc})") from exc
        return {queue: int(depth) for queue, depth in zip(QUEUES, depths, strict=True)}

    def unacked(self) -> int | None:
        """The size of kombu's unacked hash."""
        try:
            return int(self.client.hlen(UNACKED_KEY))
        except redis.RedisError as exc:
            raise BrokerUnreachable(f"Redis is unreachable ({exc})") from exc

    def close(self) -> None:
        """Close the client's pool."""
        self.client.close()


class RabbitQueueReader:
    """Queues on RabbitMQ, read by passive declares over one connection kept between reads (a
    scrape or an admin page: not worth a connection each) and made again after a failure."""

    broker: Broker = "rabbitmq"

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._connection: amqp.Connection | None = None
        self._lock = threading.Lock()  # web serves requests on threads; a channel is not shared

    def depths(self) -> dict[str, int]:
        """Each queue's ready messages (0 for a queue no worker has declared yet)."""
        with self._lock:
            try:
                return {queue: self._depth(queue) for queue in QUEUES}
            except (OSError, amqp.exceptions.AMQPError) as exc:
                self._drop()
                raise BrokerUnreachable(f"RabbitMQ is unreachable ({exc})") from exc

    def unacked(self) -> int | None:
        """Not available over AMQP."""
        return None

    def close(self) -> None:
        """Close the connection, if any."""
        with self._lock:
            self._drop()

    def _depth(self, queue: str) -> int:
        channel = self._connect().channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except amqp.exceptions.NotFound:
            return 0  # RabbitMQ closed the channel with the 404; the connection stays
        finally:
            if channel.is_open:
                channel.close()

    def _connect(self) -> amqp.Connection:
        if self._connection is None or not self._connection.connected:
            self._connection = amqp_connection(self.url, self.timeout)
            self._connection.connect()
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.collect()  # drop the socket without a closing handshake
            finally:
                self._connection = None


def amqp_connection(url: str, timeout: float) -> amqp.Connection:
    """A py-amqp connection (not yet connected) for an amqp:// or amqps:// URL as kombu reads
    it: the path after the first slash is the virtual host, `/` when empty."""
    parts = urlsplit(url)
    tls = parts.scheme == "amqps"
    port = parts.port or (AMQPS_PORT if tls else AMQP_PORT)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return amqp.Connection(
        host=f"{parts.hostname or 'localhost'}:{port}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=vhost,
        ssl=tls,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )


def queue_reader(broker_url: str, *, timeout: float) -> QueueReader:
    """The reader for the broker at broker_url (BROKER_URL, else REDIS_URL)."""
    if urlsplit(broker_url).scheme in RABBITMQ_SCHEMES:
        return RabbitQueueReader(broker_url, timeout=timeout)
    client = redis.Redis.from_url(
        broker_url, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    return RedisQueueReader(client)
