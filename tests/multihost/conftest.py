"""The cluster of tests/multihost: built once for the module, torn down even when a test fails;
skipped where namespaces cannot be made (not root, or `ip netns` refused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multihost.cluster import BROKERS, RABBITMQ_SERVER, Cluster
from tests.multihost.lifecycle import cluster_for_module


@pytest.fixture(scope="module", params=BROKERS)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Postgres and Redis on a db host, migrated from an ops host; web-a, web-b, worker-a,
    worker-b, beat-a and beat-b each on its own host; yields once both web hosts answer and both
    workers' heartbeats are in. Once per broker: Redis, and RabbitMQ (its own node on the db
    host) where it is installed. Logs are kept on a failure (or with MULTIHOST_KEEP_LOGS=1)."""
    broker = request.param
    if broker == "rabbitmq" and not RABBITMQ_SERVER.exists():
        pytest.skip(f"RabbitMQ as the broker needs {RABBITMQ_SERVER} (the rabbitmq-server package)")

    def start(running: Cluster) -> None:
        running.start_postgres()
        running.start_redis()
        if broker == "rabbitmq":
            running.start_rabbitmq()
        running.migrate()
        running.start_web()
        running.start_workers()
        running.start_beats()
        running.wait_until_serving()

    with cluster_for_module(request, lambda network: Cluster(network, broker), start) as running:
        yield running
