"""`GET /livez` says the process serves requests; `GET /readyz` says Postgres and Redis answer.
Both need no token, like `GET /api/health`, which keeps its own answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.cli.services import free_port
from tests.support import ApiClient, LiveServer, make_settings
from web.openapi import build_spec

# Loopback ports nothing listens on: a dependency that is down.
NOBODY = "127.0.0.1:{port}"


@pytest.fixture
def without_redis(database_url: str, tmp_path: Path) -> Iterator[ApiClient]:
    """The app on the test's Postgres and a Redis that is not running."""
    redis_url = f"redis://{NOBODY.format(port=free_port())}/0"
    with LiveServer(make_settings(database_url, redis_url, tmp_path / "data")) as server:
        yield ApiClient(server.url, None)


@pytest.fixture
def without_postgres(redis_url: str, tmp_path: Path) -> Iterator[ApiClient]:
    """The app on the session's Redis and a Postgres that is not running."""
    database_url = f"postgresql://conveyor@{NOBODY.format(port=free_port())}/conveyor"
    with LiveServer(make_settings(database_url, redis_url, tmp_path / "data")) as server:
        yield ApiClient(server.url, None)


@pytest.fixture
def without_either(tmp_path: Path) -> Iterator[ApiClient]:
    """The app with neither Postgres nor Redis running."""
    database_url = f"postgresql://conveyor@{NOBODY.format(port=free_port())}/conveyor"
    redis_url = f"redis://{NOBODY.format(port=free_port())}/0"
    with LiveServer(make_settings(database_url, redis_url, tmp_path / "data")) as server:
        yield ApiClient(server.url, None)


def test_livez_answers_ok_without_a_token(anonymous: ApiClient) -> None:
    response = anonymous.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_livez_answers_ok_at_once_while_postgres_and_redis_are_down(
    without_either: ApiClient,
) -> None:
    started = time.monotonic()
    response = without_either.get("/livez")
    answered_in = time.monotonic() - started
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert answered_in < 1, f"/livez took {answered_in:.2f} s with its dependencies down"


def test_readyz_answers_ok_without_a_token_when_postgres_and_redis_answer(
    anonymous: ApiClient,
) -> None:
    response = anonymous.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_readyz_answers_503_naming_redis_when_redis_is_down(without_redis: ApiClient) -> None:
    response = without_redis.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {
        "error": "redis unreachable",
        "code": "SERVICE_UNAVAILABLE",
        "status": "degraded",
        "postgres": "ok",
        "redis": "down",
    }


def test_readyz_answers_503_naming_postgres_when_postgres_is_down(
    without_postgres: ApiClient,
) -> None:
    response = without_postgres.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"] == "postgres unreachable"
    assert (body["postgres"], body["redis"]) == ("down", "ok")


def test_api_health_keeps_its_answer_beside_the_probes(anonymous: ApiClient) -> None:
    response = anonymous.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_probe_is_in_the_openapi_spec_as_needing_no_token(
    live_server: LiveServer, path: str
) -> None:
    operation = build_spec(live_server.app)["paths"][path]["get"]
    assert operation["security"] == []
