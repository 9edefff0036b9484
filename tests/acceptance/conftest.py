"""Fixtures the usage ingestion tests share (test_usage_ingest.py, test_usage_outbox.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.signals import task_postrun

from conveyor.auth import mint_service_token
from conveyor.constants import TASK_RECORD_USAGE
from tests.support import API_SECRET, ApiClient


@pytest.fixture
def service(make_client: Callable[..., ApiClient]) -> ApiClient:
    """A backend with a `usage:write` service token."""
    return make_client(token=mint_service_token("billing", ["usage:write"], secret=API_SECRET))


@pytest.fixture
def usage_results() -> Iterator[list[Any]]:
    """What each usage task run in this process returned (workers started in the test process)."""
    results: list[Any] = []

    def collect(task: Any = None, retval: Any = None, **_: Any) -> None:
        if task is not None and task.name == TASK_RECORD_USAGE:
            results.append(retval)

    task_postrun.connect(collect, weak=False)
    yield results
    task_postrun.disconnect(collect)
