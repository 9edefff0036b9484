"""GET /metrics: Prometheus counters that move as the system works, and log context."""

from __future__ import annotations

import json
import uuid

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from conveyor.runs.dispatch import Hold
from conveyor.settings import Settings
from tests.support import API_SECRET, ApiClient, LiveServer, new_run, token_for, wait_for_run


def scrape(
    client: ApiClient, **headers: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.usefixtures("worker")
def test_a_run_moves_the_run_step_and_http_counters(
    client: ApiClient, anonymous: ApiClient
) -> None:
    before = scrape(anonymous)

    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": 1}})
    assert response.status_code == 202
    wait_for_run(client, response.json()["request_id"])
    after = scrape(anonymous)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("conveyor_runs_submitted_total", workflow="echo") == 1
    assert delta("conveyor_runs_finished_total", workflow="echo", status="completed") == 1
    assert delta("conveyor_run_duration_seconds_count", workflow="echo") == 1
    assert delta("conveyor_step_duration_seconds_count", kind="python", outcome="completed") == 1
    assert (
        delta(
            "conveyor_http_requests_total",
            route="/api/agents/invoke",
            method="POST",
            status="202",
        )
        == 1
    )


def test_queue_depths_are_read_from_redis_when_scraped(
    anonymous: ApiClient, celery_app: object
) -> None:
    before = value(scrape(anonymous), "conveyor_queue_depth", queue="usage")
    celery_app.send_task("usage.record_batch", args=[str(uuid.uuid4())])  # type: ignore[attr-defined]

    assert value(scrape(anonymous), "conveyor_queue_depth", queue="usage") == before + 1


def test_runs_held_for_a_concurrency_key_are_counted_as_waiting_when_scraped(
    anonymous: ApiClient, db: Database
) -> None:
    before = value(scrape(anonymous), "conveyor_runs_waiting", reason="concurrency")
    for _ in range(3):
        new_run(db, hold=Hold(f"tenant-{uuid.uuid4()}", 1))

    after = value(scrape(anonymous), "conveyor_runs_waiting", reason="concurrency")

    assert after == before + 3


def test_every_response_carries_a_request_id_and_keeps_a_sane_one_from_the_caller(
    anonymous: ApiClient,
) -> None:
    generated = anonymous.get("/api/health").headers["X-Request-Id"]
    kept = anonymous.get("/api/health", headers={"X-Request-Id": "trace-1234-abcd"})
    replaced = anonymous.get("/api/health", headers={"X-Request-Id": "bad id {with} spaces"})

    assert len(generated) == 32
    assert kept.headers["X-Request-Id"] == "trace-1234-abcd"
    assert replaced.headers["X-Request-Id"] != "bad id {with} spaces"


def test_metrics_can_require_a_token(settings: Settings) -> None:
    protected = settings.model_copy(update={"metrics_token": SecretStr("scrape-secret-123")})
    with LiveServer(protected) as server:
        anonymous = ApiClient(server.url, None)
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == (
            401
        )
        allowed = anonymous.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
        assert allowed.status_code == 200


def test_unknown_paths_are_counted_under_one_route_not_one_per_path(anonymous: ApiClient) -> None:
    for _ in range(3):
        anonymous.get(f"/api/nothing-here/{uuid.uuid4()}")

    samples = scrape(anonymous)

    routes = {
        dict(labels).get("route") for name, labels in samples if name.startswith("conveyor_http")
    }
    assert "unmatched" in routes
    assert not any(route and "nothing-here" in route for route in routes)


def test_open_websockets_are_counted_by_channel(
    live_server: LiveServer, anonymous: ApiClient, user_id: uuid.UUID
) -> None:
    before = value(scrape(anonymous), "conveyor_websocket_connections", channel="notifications")
    url = live_server.url.replace("http://", "ws://") + "/api/ws/notifications"
    socket = websocket.create_connection(f"{url}?token={token_for(user_id)}", timeout=10)
    try:
        socket.send(json.dumps({"type": "ping"}))
        assert json.loads(socket.recv())["type"] == "pong"
        during = value(scrape(anonymous), "conveyor_websocket_connections", channel="notifications")
    finally:
        socket.close()

    assert during == before + 1


def test_usage_reported_by_backends_is_counted_per_model(
    live_server: LiveServer, anonymous: ApiClient
) -> None:
    service = ApiClient(
        live_server.url, mint_service_token("billing", ["usage:write"], secret=API_SECRET)
    )
    event = {"user_id": str(uuid.uuid4()), "provider": "openai", "model": "metrics-model",
             "prompt_tokens": 7, "completion_tokens": 3, "input_cost_micro_usd": 5,
             "output_cost_micro_usd": 6}  # fmt: skip
    before = scrape(anonymous)

    response = service.post(
        "/api/usage",
        json={"events": [{**event, "idempotency_key": f"k{i}"} for i in range(4)]},
    )
    after = scrape(anonymous)

    assert response.status_code == 202

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    prompt = {"model": "metrics-model", "kind": "prompt", "source": "api"}
    assert delta("conveyor_usage_tokens_total", **prompt) == 28
    assert delta("conveyor_usage_cost_micro_usd_total", model="metrics-model", source="api") == 44
