"""A virtual host of a test session's own on the RabbitMQ TEST_BROKER_URL names (our machines
and CI run it on 127.0.0.1), made and removed with `rabbitmqctl`; the chaos suite also restarts
the node's application with it (`stop_app`/`start_app`: listeners and every connection go)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from urllib.parse import unquote, urlsplit, urlunsplit

import amqp

from conveyor.constants import QUEUES
from conveyor.ops.broker_queues import amqp_connection, queue_reader

RABBITMQCTL_TIMEOUT_SECONDS = 60
# Celery's native delayed delivery: celery_delayed_0 (1 s) up to celery_delayed_27 (2**27 s).
DELAYED_QUEUES = [f"celery_delayed_{level}" for level in range(28)]
START_SECONDS = 60.0


def unavailable_reason() -> str | None:
    """Why a session cannot have a vhost of its own here, or None."""
    url = os.environ.get("TEST_BROKER_URL", "")
    if not url.startswith("amqp://"):
        return "no RabbitMQ: set TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// to run"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH: vhosts are made (and RabbitMQ restarted) with it"
    return None


class ScratchVhost:
    """A vhost of one session's own on the machine's RabbitMQ, and the node's restart."""

    def __init__(self, url: str, purpose: str) -> None:
        parts = urlsplit(url)
        self.vhost = f"conveyor-{purpose}-{uuid.uuid4().hex[:8]}"
        user = unquote(parts.username or "guest")
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")
        self.url = urlunsplit((parts.scheme, parts.netloc, f"/{self.vhost}", "", ""))

    def restart(self, down_seconds: float) -> float:
        """Stop the RabbitMQ application, keep it down, start it; returns (monotonic) when it
        accepts connections again."""
        rabbitmqctl("stop_app")
        try:
            time.sleep(down_seconds)
        finally:
            rabbitmqctl("start_app")
        deadline = time.monotonic() + START_SECONDS
        while not self.answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"RabbitMQ did not come back within {START_SECONDS} s")
            time.sleep(0.2)
        return time.monotonic()

    def answers(self) -> bool:
        """Whether the vhost accepts a connection."""
        connection = amqp_connection(self.url, timeout=2)
        try:
            connection.connect()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        connection.close()
        return True

    def purge(self) -> None:
        """Empty Conveyor's queues and the delayed-delivery ones in this vhost."""
        purge_queues(self.url)

    def depths(self) -> dict[str, int]:
        """Messages ready in each of Conveyor's queues."""
        reader = queue_reader(self.url, timeout=2)
        try:
            return reader.depths()
        finally:
            reader.close()

    def close(self) -> None:
        """Delete the vhost and everything in it."""
        rabbitmqctl("delete_vhost", self.vhost)


def rabbitmqctl(*args: str) -> None:
    """Run rabbitmqctl against the local node; fail with its output."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")


def purge_queues(url: str) -> None:
    """Empty Conveyor's queues and the delayed-delivery ones (those not declared yet are
    skipped); emptied, not deleted: kombu's pooled connections remember what they declared and
    would publish into the void."""
    connection = amqp_connection(url, timeout=5)
    connection.connect()
    try:
        for queue in [*QUEUES, *DELAYED_QUEUES]:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except amqp.exceptions.NotFound:
                continue  # RabbitMQ closed the channel
            channel.close()
    finally:
        connection.close()
