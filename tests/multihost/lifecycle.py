"""A cluster's life in a test module: namespaces checked (skip where they cannot be made), a
killed run's leftovers swept, the cluster built and started, and closed at the end, its logs
kept when anything failed (or with MULTIHOST_KEEP_LOGS=1)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from tests.multihost.cluster import TMP_PREFIX, Cluster
from tests.multihost.network import Network, sweep_leftovers, why_namespaces_are_unavailable

C = TypeVar("C", bound=Cluster)


@contextmanager
def cluster_for_module(
    request: pytest.FixtureRequest, build: Callable[[Network], C], start: Callable[[C], None]
) -> Iterator[C]:
    """build(network) a cluster, start() it and yield it; torn down even when a test fails."""
    reason = why_namespaces_are_unavailable()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    for stale in sweep_leftovers():  # a killed run's: its data and logs go too
        for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{stale}-*"):
            shutil.rmtree(folder, ignore_errors=True)
    network = Network()
    running: C | None = None
    broken = True
    try:
        running = build(network)
        start(running)
        broken = False
        yield running
    finally:
        if running is not None:
            failed = broken or request.session.testsfailed > 0
            running.close(keep_logs=failed or bool(os.environ.get("MULTIHOST_KEEP_LOGS")))
        else:
            network.close()
