"""Helpers shared by tests: settings, a live HTTP server, an API client, waiting for runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from celery import Celery
from werkzeug.serving import BaseWSGIServer, make_server

import conveyor.workflows.builtin  # noqa: F401 - the built-in agents tests run
from conveyor import runs, workflows
from conveyor.auth.tokens import mint_token
from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import free_port
from conveyor.constants import TASK_REQUEUE_STALE_RUNS
from conveyor.db import Database
from conveyor.runs.payloads import FINAL_STATUSES
from conveyor.runs.store import NewRun
from conveyor.settings import Settings
from web import create_app

JWT_SECRET = "test-secret-with-at-least-32-bytes-of-entropy!!"
API_SECRET = "test-api-secret-for-backend-and-service-tokens"
# The step rows of a run of the built-in `echo` agent, for tests that create runs directly.
ECHO_STEPS = [("echo", "python")]
REPO = Path(__file__).resolve().parent.parent
GUNICORN_STARTUP_SECONDS = 30


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
        # Tests call anonymous endpoints freely; test_rate_limit.py sets its own low limit.
        "unauthenticated_rate_limit": 1_000_000,
        "unauthenticated_rate_burst": 1_000_000,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def worker_env(settings: Settings, **env: str) -> dict[str, str]:
    """The environment of a worker process (for celery_process) running with settings; env adds
    or overrides variables."""
    return {
        "DATABASE_URL": str(settings.database_url),
        "REDIS_URL": str(settings.redis_url),
        "BROKER_URL": settings.broker_url or "",
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "API_JWT_SECRET": API_SECRET,
        "LLM_BASE_URL": settings.llm_base_url,
        "RUN_LEASE_SECONDS": str(settings.run_lease_seconds),
        "CANCEL_CHECK_SECONDS": str(settings.cancel_check_seconds),
        "CONVEYOR_WORKFLOW_MODULES": (
            "tests.workflows_for_tests,tests.fanout_workflows_for_tests,tests.child_workflows_for_tests"
        ),
        "CONVEYOR_DATA_DIR": str(settings.data_dir),
        "LOG_LEVEL": "WARNING",
        **env,
    }


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
        self.app.extensions["conveyor.enqueuer"].close()
        self.app.extensions["conveyor.ops_queues"].close()
        self.app.extensions["conveyor.metrics_queues"].close()


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


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll condition() until it returns something truthy, and return that; fail naming what
    did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


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


def finish_with_reaper(
    client: ApiClient, celery_app: Celery, run_id: str, timeout: float
) -> dict[str, Any]:
    """Fire beat's reaper by hand until the run ends (it hands a run on once its lease has
    expired, as after a worker killed mid-run); the last view."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = client.get(f"/api/runs/{run_id}").json()
    while view["status"] not in FINAL_STATUSES and time.monotonic() < deadline:
        celery_app.send_task(TASK_REQUEUE_STALE_RUNS, kwargs={"older_than_seconds": 0})
        time.sleep(0.5)
        view = client.get(f"/api/runs/{run_id}").json()
    return view


def celery_process(
    *args: str, env: dict[str, str], log: Path | None = None, own_group: bool = False
) -> subprocess.Popen[bytes]:
    """`celery -A worker.app <args>` in its own process, as production runs it, with env added to
    this process's environment; output to log (else discarded). With own_group, the process and
    its pool children form a process group that one killpg ends, as a crashed host would."""
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", *args],
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]


@contextmanager
def worker_subprocess(
    settings: Settings, queues: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker in its own process, as in production, consuming queues (comma-separated)
    with settings and env; killed (kill -9) at the end unless the test ended it."""
    process = celery_process(*worker_args(queues), env=worker_env(settings, **env))
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def new_run(
    db: Database,
    workflow_id: str = "echo",
    inputs: dict[str, Any] | None = None,
    *,
    user_id: uuid.UUID | None = None,
    **options: Any,
) -> NewRun:
    """A run of a registered workflow stored as a submit stores it (a random user unless given),
    not published: for tests that claim, execute or send it themselves."""
    definition = workflows.get(workflow_id)
    return runs.create_run(
        db,
        user_id=user_id or uuid.uuid4(),
        kind=definition.kind,
        workflow_id=workflow_id,
        input=inputs or {},
        metadata={},
        steps=definition.step_rows(),
        **options,
    )


def worker_args(
    queues: str, *, name: str | None = None, concurrency: int = 1, loglevel: str = "WARNING"
) -> list[str]:
    """The arguments of a worker on queues (for celery_process): solo, or prefork when
    concurrency > 1."""
    named = ["--hostname", name] if name else []
    pool = ["--pool", "solo"] if concurrency == 1 else ["--concurrency", str(concurrency)]
    return [
        "worker", *pool, "--queues", queues, *named,
        "--without-mingle", "--without-gossip", "--loglevel", loglevel,
    ]  # fmt: skip


@contextmanager
def gunicorn_process(
    settings: Settings, data_dir: Path, *, workers: int, threads: int, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`conveyor run`'s gunicorn command on a loopback port, once it answers its health check:
    the process and its base URL. Stopped (SIGTERM, then SIGKILL) unless the test stopped it."""
    port = free_port()
    command = gunicorn_command(
        sys.executable, host="127.0.0.1", port=port, workers=workers, threads=threads
    )
    child_env = worker_env(settings, CONVEYOR_DATA_DIR=str(data_dir), **env)
    process = subprocess.Popen(shlex.split(command), env={**os.environ, **child_env}, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + GUNICORN_STARTUP_SECONDS
        while True:
            try:
                if requests.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still importing the app
            assert time.monotonic() < deadline, "gunicorn did not answer in time"
            assert process.poll() is None, "gunicorn exited"
            time.sleep(0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(timeout=30)
