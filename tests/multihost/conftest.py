"""The cluster of tests/multihost: built once for the module, torn down even when a test fails;
skipped where namespaces cannot be made (not root, or `ip netns` refused)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost.cluster import BROKERS, RABBITMQ_SERVER, TMP_PREFIX, Cluster
from tests.multihost.network import Network, sweep_leftovers, why_namespaces_are_unavailable


@pytest.fixture(scope="module", params=BROKERS)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Postgres and Redis on a db host, migrated from an ops host; web-a, web-b, worker-a,
    worker-b, beat-a and beat-b each on its own host; yields once both web hosts answer and both
    workers' heartbeats are in. Once per broker: Redis, and RabbitMQ (its own node on the db
    host) where it is installed. Logs are kept on a failure (or with MULTIHOST_KEEP_LOGS=1)."""
    broker = request.param
    if broker == "rabbitmq" and not RABBITMQ_SERVER.exists():
        pytest.skip(f"RabbitMQ as the broker needs {RABBITMQ_SERVER} (the rabbitmq-server package)")
    reason = why_namespaces_are_unavailable()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    for stale in sweep_leftovers():  # a killed run's: its data and logs go too
        for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{stale}-*"):
            shutil.rmtree(folder, ignore_errors=True)
    network = Network()
    running: Cluster | None = None
    broken = True
    try:
        running = Cluster(network, broker)
        running.start_postgres()
        running.start_redis()
        if broker == "rabbitmq":
            running.start_rabbitmq()
        running.migrate()
        running.start_web()
        running.start_workers()
        running.start_beats()
        running.wait_until_serving()
        broken = False
        yield running
    finally:
        if running is not None:
            failed = broken or request.session.testsfailed > 0
            running.close(keep_logs=failed or bool(os.environ.get("MULTIHOST_KEEP_LOGS")))
        else:
            network.close()
