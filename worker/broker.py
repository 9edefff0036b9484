"""kombu's Redis transport with a guard (a worker must survive Redis going away) and one client
per channel (see Channel._create_client).

When the broker connection drops, Celery closes the channel, and kombu then tries to put the
channel's unacknowledged messages back on their queues. The connection is already released by
then, so kombu cannot build a Redis client: it raises AttributeError (`'NoneType' object has no
attribute 'hostname'`, kombu 5.7), Celery reports an "Unrecoverable error" and the worker exits.
The chaos suite's Redis restart hit it (tests/chaos), and the same error on acking a task that
finished meanwhile. Skipping that restore loses nothing: Redis
is unreachable anyway, the messages are still in its unacked hash, and any worker restores them
once the visibility timeout passes (runs, usage batches and Stripe events are also republished
from Postgres by their requeue jobs).
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis
import structlog
from kombu.transport import redis as kombu_redis

log = structlog.get_logger(__name__)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """Restores unacked messages only while the channel can still reach Redis."""

    def restore_unacked(self, client: Any = None) -> None:
        transport = self.channel.connection
        if client is None and (transport is None or transport.client is None):
            log.warning("broker_restore_skipped", unacked=len(self._delivered))
            self._delivered.clear()
            return
        super().restore_unacked(client)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """The Redis channel with the guarded QoS, and a connection error (which kombu and Celery
    handle: an ack that fails is logged and the message comes back later) instead of an
    AttributeError for anything else tried on a channel whose connection was released."""

    QoS = QoS
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One Redis client per channel for the plain commands (ack, publish, queue sizes)
        rather than a new one for each: building a client was 4-7 % of a web or worker process's
        CPU under load (bench/load.py). It shares the channel's connection pool, as each new one
        did, and is made again when the channel gets a new pool."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.exceptions.ConnectionError("The broker connection was closed.")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """The Redis transport with the guarded channel."""

    Channel = Channel


def install() -> None:
    """Make `redis://` and `rediss://` broker URLs use this transport (kombu's own registry of
    transport names; `rediss` keeps kombu's TLS defaults, which it keys on the name)."""
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
