"""What a client can get wrong answers 4xx with `{"error", "code"}`; nothing is stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conveyor.auth.tokens import mint_token
from conveyor.db import sql_connection
from tests.support import ApiClient, token_for


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


def count_runs(database_url: str) -> int:
    with sql_connection(database_url) as conn:
        row = conn.execute("select count(*) from workflow_runs").fetchone()
    assert row is not None
    return int(row[0])


def test_malformed_json_is_400_invalid_json(client: ApiClient, database_url: str) -> None:
    response = client.post(
        "/api/agents/invoke",
        data=b'{"agent_type": "echo",',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "INVALID_JSON")
    assert count_runs(database_url) == 0


def test_wrong_content_type_is_400_invalid_content_type(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", data="agent_type=echo", headers={"Content-Type": "text/plain"}
    )
    body = assert_error(response, 400, "INVALID_CONTENT_TYPE")
    assert "application/json" in body["error"]


def test_missing_field_is_400_invalid_input_naming_it(client: ApiClient) -> None:
    body = assert_error(client.post("/api/agents/invoke", json={"input": {}}), 400, "INVALID_INPUT")
    assert body["details"]["fields"][0]["field"] == "agent_type"


def test_unknown_field_is_400_invalid_input(client: ApiClient) -> None:
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "inputs": {}})
    body = assert_error(response, 400, "INVALID_INPUT")
    assert "inputs" in body["error"]


def test_body_that_is_not_an_object_is_400_invalid_input(client: ApiClient) -> None:
    assert_error(client.post("/api/agents/invoke", json=["echo"]), 400, "INVALID_INPUT")


def test_unknown_agent_type_is_400_unknown_agent_listing_known_ones(
    client: ApiClient, database_url: str
) -> None:
    response = client.post("/api/agents/invoke", json={"agent_type": "nope", "input": {}})
    body = assert_error(response, 400, "UNKNOWN_AGENT")
    assert "echo" in body["error"]
    assert count_runs(database_url) == 0


def test_invalid_agent_input_is_400_invalid_input(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", json={"agent_type": "echo", "input": {"message": 7}}
    )
    body = assert_error(response, 400, "INVALID_INPUT")
    assert body["details"]["fields"][0]["field"] == "message"


def test_invoking_as_another_user_is_403(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", json={"agent_type": "echo", "input": {}, "user_id": str(uuid.uuid4())}
    )
    assert_error(response, 403, "FORBIDDEN")


def test_overlong_idempotency_key_is_400(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke",
        json={"agent_type": "echo", "input": {}},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert_error(response, 400, "INVALID_INPUT")


def test_body_over_the_limit_is_413(client: ApiClient) -> None:
    payload = b'{"agent_type": "echo", "input": {"message": "' + b"x" * 2_000_000 + b'"}}'
    response = client.post(
        "/api/agents/invoke", data=payload, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "REQUEST_ENTITY_TOO_LARGE")


def test_unknown_run_id_is_404(client: ApiClient) -> None:
    assert_error(client.get(f"/api/runs/{uuid.uuid4()}"), 404, "RUN_NOT_FOUND")


def test_run_id_that_is_not_a_uuid_is_404(client: ApiClient) -> None:
    assert_error(client.get("/api/runs/not-a-uuid"), 404, "RUN_NOT_FOUND")


def test_unknown_route_is_json_404(client: ApiClient) -> None:
    assert_error(client.get("/api/nothing-here"), 404, "NOT_FOUND")


def test_wrong_method_is_json_405(client: ApiClient) -> None:
    assert_error(client.get("/api/agents/invoke"), 405, "METHOD_NOT_ALLOWED")


def test_missing_token_is_401_unauthorized(anonymous: ApiClient) -> None:
    assert_error(anonymous.get(f"/api/runs/{uuid.uuid4()}"), 401, "UNAUTHORIZED")


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic abc", "token"])
def test_malformed_authorization_header_is_401(anonymous: ApiClient, header: str) -> None:
    response = anonymous.get("/api/agents", headers={"Authorization": header})
    assert_error(response, 401, "UNAUTHORIZED")


def test_expired_token_is_401_token_expired(make_client: Any) -> None:
    expired = token_for(uuid.uuid4(), ttl_seconds=-3600)
    assert_error(make_client(token=expired).get("/api/agents"), 401, "TOKEN_EXPIRED")


def test_token_for_another_audience_is_401_invalid_token(make_client: Any) -> None:
    wrong = token_for(uuid.uuid4(), audience="anon")
    body = assert_error(make_client(token=wrong).get("/api/agents"), 401, "INVALID_TOKEN")
    assert "audience" in body["error"]


def test_token_signed_with_another_secret_is_401_invalid_token(make_client: Any) -> None:
    forged = mint_token(uuid.uuid4(), secret="another-projects-secret-of-32-bytes-or-more")
    body = assert_error(make_client(token=forged).get("/api/agents"), 401, "INVALID_TOKEN")
    assert "signature" in body["error"]


def test_garbage_token_is_401_invalid_token(make_client: Any) -> None:
    assert_error(make_client(token="not.a.jwt").get("/api/agents"), 401, "INVALID_TOKEN")


def test_health_needs_no_token(anonymous: ApiClient) -> None:
    response = anonymous.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


def test_agents_are_listed_with_input_schemas(client: ApiClient) -> None:
    agents = client.get("/api/agents").json()["agents"]
    echo = next(a for a in agents if a["agent_type"] == "echo")
    assert echo["input_schema"]["type"] == "object"


def test_a_nul_character_in_the_body_is_400_not_500(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", json={"agent_type": "echo", "input": {"message": "a\u0000b"}}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"


def test_a_deeply_nested_body_is_400_not_500(client: ApiClient) -> None:
    body = '{"agent_type": "echo", "input": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"

    response = client.post(
        "/api/agents/invoke", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["code"] in ("INVALID_JSON", "INVALID_INPUT")


def test_a_nul_character_in_a_query_parameter_is_400_not_500(client: ApiClient) -> None:
    response = client.get("/api/runs", params={"workflow_id": "a\x00b"})

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"
