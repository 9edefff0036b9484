"""Helpers shared by tests: settings, a live HTTP server, an API client, waiting for runs."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from celery import Celery
from werkzeug.serving import BaseWSGIServer, make_server

import conveyor.builtin  # noqa: F401 - the built-in agents tests run
from conveyor.auth import mint_token
from conveyor.models import FINAL_STATUSES
from conveyor.settings import Settings
from web import create_app

JWT_SECRET = "test-secret-with-at-least-32-bytes-of-entropy!!"
API_SECRET = "test-api-secret-for-backend-and-service-tokens"
# The step rows of a run of the built-in `echo` agent, for tests that create runs directly.
ECHO_STEPS = [("echo", "python")]


def make_settings(database_url: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test, ignoring the developer's environment and `.env`."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "supabase_jwt_secret": JWT_SECRET,
        "api_jwt_secret": API_SECRET,
        "environment": "development",
        "data_dir": data_dir,
        "log_format": "console",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def close_worker_resources(app: Celery) -> None:
    """Close the pools a worker opened for app."""
    resources = getattr(app, "conveyor_resources", None)
    if resources is not None:
        resources.db.close()
        resources.publisher.close()


class LiveServer:
    """The Flask app served by werkzeug on a loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self.app.extensions["conveyor.db"].close()


class ApiClient:
    """requests against the live server, with a user's bearer token."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request; every call has a timeout so a hung server fails the test, not CI."""
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET path."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """POST path."""
        return self.request("POST", path, **kwargs)


def token_for(user_id: uuid.UUID, **kwargs: Any) -> str:
    """A Supabase-shaped access token for user_id, signed with the test secret."""
    return mint_token(user_id, secret=JWT_SECRET, **kwargs)


def wait_for_run(
    client: ApiClient, run_id: str, *, until: frozenset[str] = FINAL_STATUSES, timeout: float = 15
) -> dict[str, Any]:
    """Poll GET /api/runs/<id> until its status is in `until`; fail with the last view if not."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        view = response.json()
        if view["status"] in until:
            return view
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {view.get('status')!r} after {timeout} s: {view}")
