"""One system per broker for the chaos session (its own Postgres, Redis, web, two workers, two
beats; Celery on Redis, then on RabbitMQ); the table of every fault is printed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.report import LEGEND, RESULTS, table
from tests.chaos.system import STARTUP_SECONDS, System, wait_until
from tests.rabbitmq_vhost import ScratchVhost, unavailable_reason


@pytest.fixture(scope="session", params=["redis", "rabbitmq"])
def system(request: pytest.FixtureRequest) -> Iterator[System]:
    """Everything running and the scheduler lock taken, with Celery on Redis and then on
    RabbitMQ (skipped without TEST_BROKER_URL); the logs are kept if a test failed."""
    rabbitmq = None
    if request.param == "rabbitmq":
        reason = unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        rabbitmq = ScratchVhost(os.environ["TEST_BROKER_URL"], "chaos")
    # A short path: Postgres's Unix socket lives under it (108-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    running = System(tmp, rabbitmq)
    try:
        running.start_web()
        for name in ("w1", "w2"):
            running.start_worker(name)
        for name in ("beat-a", "beat-b"):
            running.start_beat(name)
        wait_until(running.active_beat, STARTUP_SECONDS, "a beat taking the scheduler lock")
        yield running
    finally:
        running.close()
        if request.session.testsfailed:
            print(f"\nchaos: process logs kept in {running.logs}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos table, after pytest's own summary."""
    if RESULTS:
        terminalreporter.section("chaos")
        terminalreporter.write_line(table(RESULTS))
        terminalreporter.write_line(LEGEND)
