"""Real services for every test: Postgres (a migrated template, cloned per test), Redis, a Celery
worker in-process and the Flask app on a loopback port.

TEST_DATABASE_URL / TEST_REDIS_URL point at existing servers; without them the embedded ones start
(one of each per pytest-xdist process).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from psycopg import sql
from psycopg.conninfo import make_conninfo

from conveyor.cli.services import EmbeddedRedis
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.ops.migrations import migrate
from conveyor.settings import Settings
from tests import fake_stripe as fake_stripe_module
from tests.fake_llm import FakeLlm
from tests.fake_storage import StorageServer
from tests.fake_stripe import FakeStripe
from tests.fake_supabase_auth import ANON_KEY, FakeSupabaseAuth
from tests.rabbitmq_vhost import ScratchVhost, purge_queues, unavailable_reason
from tests.support import (
    JWT_SECRET,
    ApiClient,
    LiveServer,
    close_worker_resources,
    make_settings,
    token_for,
)
from worker.celery_app import create_celery

KOMBU_BINDINGS = b"_kombu.binding."
STORAGE_SERVICE_KEY = "service-role-key"


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL with rights to create databases, on TEST_DATABASE_URL's server or an embedded one."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    import pgserver  # type: ignore[import-untyped]

    # A short path: the server's unix socket lives in its data dir (108-byte limit).
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_REDIS_URL, or an embedded redis-server for this session."""
    configured = os.environ.get("TEST_REDIS_URL")
    if configured:
        yield redis_database_of_this_process(configured)
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def redis_database_of_this_process(url: str) -> str:
    """url for this test process: under pytest-xdist, worker gwN uses the database N after url's,
    since each process flushes its Redis between tests and runs a worker on its queues."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    base = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + int(worker[2:])}"))


def database_named(admin_url: str, name: str) -> str:
    """admin_url with its database replaced by name."""
    return make_conninfo(admin_url, dbname=name)


@contextmanager
def scratch_database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of template, if given) named prefix_<random>, dropped on exit;
    yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("{} template {}").format(create, sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once per session, cloned by each test."""
    with scratch_database(pg_admin_url, "conveyor_template") as name:
        migrate(database_named(pg_admin_url, name))
        yield name


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    with scratch_database(pg_admin_url, "conveyor_test", template_database) as name:
        yield database_named(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A new database Conveyor was never installed in."""
    with scratch_database(pg_admin_url, "conveyor_empty") as name:
        yield database_named(pg_admin_url, name)


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The session's Redis, emptied of everything but kombu's queue bindings."""
    client = redis.Redis.from_url(redis_url)
    # Bindings are declared once per broker connection; deleting them would drop messages.
    doomed = [key for key in client.scan_iter(count=1000) if not key.startswith(KOMBU_BINDINGS)]
    if doomed:
        client.delete(*doomed)
    yield client
    client.close()


@pytest.fixture(scope="session")
def suite_vhost() -> Iterator[ScratchVhost | None]:
    """With TEST_SUITE_BROKER=rabbitmq (`make test-rabbitmq`), every test's Celery runs on
    TEST_BROKER_URL's RabbitMQ, in a vhost of this process's own (as each has its own Redis
    database); otherwise None: Celery runs on the session's Redis."""
    if os.environ.get("TEST_SUITE_BROKER", "redis") != "rabbitmq":
        yield None
        return
    reason = unavailable_reason()
    if reason is not None:
        raise pytest.UsageError(f"TEST_SUITE_BROKER=rabbitmq, but {reason}")
    vhost = ScratchVhost(os.environ["TEST_BROKER_URL"], "tests")
    yield vhost
    vhost.close()


@pytest.fixture
def suite_broker(suite_vhost: ScratchVhost | None) -> str | None:
    """The suite's RabbitMQ vhost with its queues emptied for this test, or None (Redis)."""
    if suite_vhost is None:
        return None
    suite_vhost.purge()
    return suite_vhost.url


@pytest.fixture
def settings(
    database_url: str,
    redis_url: str,
    clean_redis: redis.Redis,
    suite_broker: str | None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Settings:
    """Settings pointing at this test's database and the session's Redis. A test module may set
    SETTINGS (overrides), USES_FAKE_LLM = True (model calls go to the `fake_llm` server) and
    USES_FAKE_STRIPE = True (Stripe API calls go to the `fake_stripe` server) and
    USES_FAKE_STORAGE = True (large outputs go to the `storage` server's bucket) and
    USES_FAKE_AUTH = True (Supabase Auth calls go to the `fake_auth` server) and
    USES_RABBITMQ = True (Celery's broker is the `rabbitmq` fixture's)."""
    overrides = dict(getattr(request.module, "SETTINGS", {}))
    if suite_broker is not None:
        overrides.setdefault("broker_url", suite_broker)
    if getattr(request.module, "USES_FAKE_AUTH", False):
        overrides["supabase_url"] = request.getfixturevalue("fake_auth").url
        overrides["supabase_anon_key"] = ANON_KEY
    if getattr(request.module, "USES_FAKE_STORAGE", False):
        overrides["supabase_url"] = request.getfixturevalue("storage").url
        overrides["supabase_service_role_key"] = STORAGE_SERVICE_KEY
    if getattr(request.module, "USES_RABBITMQ", False):
        overrides["broker_url"] = request.getfixturevalue("rabbitmq")
    if getattr(request.module, "USES_FAKE_LLM", False):
        overrides["llm_base_url"] = request.getfixturevalue("fake_llm").base_url
    if getattr(request.module, "USES_FAKE_STRIPE", False):
        overrides["stripe_api_base"] = request.getfixturevalue("fake_stripe").url
        overrides.setdefault("stripe_secret_key", fake_stripe_module.SECRET_KEY)
    return make_settings(database_url, redis_url, tmp_path / "data", **overrides)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """TEST_BROKER_URL, a RabbitMQ (`.ci/run` sets it); the tests that need one skip without."""
    url = os.environ.get("TEST_BROKER_URL", "")
    if not url.startswith(("amqp://", "amqps://")):
        pytest.skip("no RabbitMQ: set TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// to run")
    return url


@pytest.fixture
def rabbitmq(rabbitmq_url: str) -> Iterator[str]:
    """The RabbitMQ, to this test alone (its tests share one broker: an exclusive lock makes
    them take turns across xdist processes), with Conveyor's queues and the delayed-delivery
    queues emptied."""
    with (Path(tempfile.gettempdir()) / "conveyor-tests-rabbitmq.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        purge_queues(rabbitmq_url)
        yield rabbitmq_url


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    """A server speaking Stripe's API on loopback, scripted by the test."""
    with FakeStripe() as server:
        yield server


@pytest.fixture
def fake_auth() -> Iterator[FakeSupabaseAuth]:
    """A server speaking Supabase Auth's (GoTrue's) API on loopback, signing with the test's
    JWT secret."""
    server = FakeSupabaseAuth(JWT_SECRET)
    yield server
    server.close()


@pytest.fixture
def storage() -> Iterator[StorageServer]:
    """A server speaking Supabase Storage's API on loopback, with the artifact bucket made."""
    server = StorageServer(STORAGE_SERVICE_KEY)
    server.create_bucket("conveyor-artifacts")
    yield server
    server.close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLlm]:
    """An OpenAI-compatible server on loopback, scripted by the test."""
    with FakeLlm() as server:
        yield server


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """The test's database as the domain code sees it."""
    assert settings.database_url is not None
    database = Database(settings.database_url, max_size=4)
    yield database
    database.close()


@pytest.fixture
def publisher(settings: Settings) -> Iterator[EventPublisher]:
    """What the worker publishes with."""
    assert settings.redis_url is not None
    events = EventPublisher(settings.redis_url)
    yield events
    events.close()


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    """The Celery app as the worker builds it, for this test's settings."""
    app = create_celery(settings)
    yield app
    app.close()


@pytest.fixture
def worker(celery_app: Celery) -> Iterator[Any]:
    """A real Celery worker consuming every queue, in a thread of this process."""
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=20, loglevel="WARNING"
    ) as running:
        yield running
    close_worker_resources(celery_app)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """The app on a real HTTP server."""
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def make_client(live_server: LiveServer) -> Callable[..., ApiClient]:
    """Build API clients: for a user (random by default), or with an explicit token or none."""

    def build(user_id: uuid.UUID | None = None, *, token: str | None = None) -> ApiClient:
        return ApiClient(live_server.url, token or token_for(user_id or uuid.uuid4()))

    return build


@pytest.fixture
def anonymous(live_server: LiveServer) -> ApiClient:
    """An API client without a token."""
    return ApiClient(live_server.url, None)


@pytest.fixture
def user_id() -> uuid.UUID:
    """A fresh user."""
    return uuid.uuid4()


@pytest.fixture
def client(make_client: Callable[..., ApiClient], user_id: uuid.UUID) -> ApiClient:
    """An API client signed in as user_id."""
    return make_client(user_id)
