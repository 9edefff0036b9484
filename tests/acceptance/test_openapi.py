"""The published contract: `/api/openapi.json` covers every route and is valid OpenAPI 3.1;
`/api/docs` renders it with assets served by the app itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.support import ApiClient, LiveServer


@pytest.fixture
def spec(anonymous: ApiClient) -> dict[str, Any]:
    """The document as a client without a token fetches it."""
    response = anonymous.get("/api/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_is_in_the_spec_with_its_methods(
    live_server: LiveServer, spec: dict[str, Any]
) -> None:
    missing = []
    for rule in live_server.app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        missing += [f"{m.upper()} {path}" for m in methods if m not in spec["paths"].get(path, {})]
    assert missing == []


def test_every_view_declares_its_contract(live_server: LiveServer) -> None:
    """A new route must say what it accepts and answers (`@contract` in web/openapi.py)."""
    undeclared = [
        rule.rule
        for rule in live_server.app.url_map.iter_rules()
        if not (rule.endpoint == "static" or rule.endpoint.endswith(".static"))
        and not hasattr(live_server.app.view_functions[rule.endpoint], "conveyor_contract")
    ]
    assert undeclared == []


def test_request_bodies_and_responses_refer_to_the_pydantic_models(
    spec: dict[str, Any],
) -> None:
    invoke = spec["paths"]["/api/agents/invoke"]["post"]
    body = invoke["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/InvokeRequest"}
    accepted = invoke["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/InvokeResponse"}
    assert set(spec["components"]["schemas"]["InvokeRequest"]["required"]) == {"agent_type"}


def test_query_models_become_query_parameters(spec: dict[str, Any]) -> None:
    parameters = spec["paths"]["/api/runs"]["get"]["parameters"]
    limit = next(p for p in parameters if p["name"] == "limit")
    assert limit["in"] == "query"
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)


def test_errors_are_declared_with_the_shared_error_shape(spec: dict[str, Any]) -> None:
    error = spec["paths"]["/api/runs/{run_id}"]["get"]["responses"]["4XX"]
    assert error["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorView"
    }
    assert set(spec["components"]["schemas"]["ErrorView"]["required"]) == {"error", "code"}


def test_bearer_auth_is_required_except_on_public_routes(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/api/runs"]["get"]["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/api/health"]["get"]["security"] == []


def test_websockets_are_documented_as_get_switching_protocols(spec: dict[str, Any]) -> None:
    socket = spec["paths"]["/api/ws/workflows"]["get"]
    assert "101" in socket["responses"]
    assert "websocket" in socket["description"]


def test_docs_page_renders_the_spec_with_local_assets(anonymous: ApiClient) -> None:
    page = anonymous.get("/api/docs")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/api/openapi.json" in page.text
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts
    for src in scripts:
        assert src.startswith("/")  # served by us, no CDN
        assert anonymous.get(src).status_code == 200, src
