"""Fixtures acceptance tests share: a `usage:write` service and the usage tasks' results
(test_usage_ingest.py, test_usage_outbox.py); websockets to the live server and the worker's
event publisher (the realtime tests)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.signals import task_postrun

from conveyor.auth.tokens import mint_service_token
from conveyor.constants import TASK_RECORD_USAGE
from tests.acceptance.websocket_clients import Socket, ws_url
from tests.support import API_SECRET, ApiClient, LiveServer, token_for


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


@pytest.fixture
def connect(live_server: LiveServer) -> Iterator[Any]:
    """Open sockets to the live server (closed after the test, with the server's hub)."""
    opened: list[Socket] = []

    def open_socket(channel: str, user: uuid.UUID | None = None, **kwargs: Any) -> Socket:
        token = kwargs.pop("token", None) or token_for(user or uuid.uuid4())
        sock = Socket(ws_url(live_server, channel, token), **kwargs)
        opened.append(sock)
        return sock

    yield open_socket
    for sock in opened:
        sock.close()
    live_server.app.extensions["conveyor.hub"].stop()


@pytest.fixture
def admin(make_client: Callable[..., ApiClient]) -> ApiClient:
    """An API client signed in as an admin (token claim)."""
    return make_client(token=token_for(uuid.uuid4(), admin=True))
