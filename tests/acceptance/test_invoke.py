"""Submitting an agent run over HTTP and following it to the end, through a real worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import ApiClient, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")


def invoke(client: ApiClient, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post("/api/agents/invoke", json=body, **kwargs)
    assert response.status_code in (200, 202), response.text
    data: dict[str, Any] = response.json()
    return data


def test_invoked_echo_run_completes_with_its_input_as_output(client: ApiClient) -> None:
    """The whole loop: HTTP submit, Postgres row, Celery message, worker, poll until completed."""
    accepted = invoke(client, {"agent_type": "echo", "input": {"message": "hello"}})
    assert accepted["status"] == "queued"
    assert accepted["links"]["self"] == f"/api/runs/{accepted['request_id']}"

    run = wait_for_run(client, accepted["request_id"])

    assert run["status"] == "completed"
    assert run["output"] == {"message": "hello"}
    assert run["progress"] == 1.0
    assert run["attempts"] == 1
    assert [step["status"] for step in run["steps"]] == ["completed"]
    assert run["started_at"] <= run["finished_at"]


def test_submit_answers_202_with_the_new_run(client: ApiClient) -> None:
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}})
    assert response.status_code == 202
    assert uuid.UUID(response.json()["request_id"])


def test_same_idempotency_key_returns_the_first_run(client: ApiClient) -> None:
    body = {"agent_type": "echo", "input": {"message": "once"}}
    first = invoke(client, body, headers={"Idempotency-Key": "order-42"})
    again = client.post("/api/agents/invoke", json=body, headers={"Idempotency-Key": "order-42"})

    assert again.status_code == 200
    assert again.json()["request_id"] == first["request_id"]


def test_idempotency_keys_are_per_user(make_client: Any) -> None:
    """Two users using the same key get two runs."""
    body = {"agent_type": "echo", "input": {}}
    headers = {"Idempotency-Key": "shared-key"}
    first = invoke(make_client(), body, headers=headers)
    second = invoke(make_client(), body, headers=headers)
    assert first["request_id"] != second["request_id"]


def test_owner_reads_run_with_its_steps(client: ApiClient) -> None:
    accepted = invoke(client, {"agent_type": "echo", "input": {"n": 1}, "metadata": {"src": "t"}})
    run = wait_for_run(client, accepted["request_id"])
    assert run["workflow_id"] == "echo"
    assert run["kind"] == "agent"
    assert run["metadata"] == {"src": "t"}
    assert run["steps"][0]["name"] == "echo"


def test_another_users_run_answers_404(make_client: Any) -> None:
    """Existence is not leaked: someone else's run looks exactly like a missing one."""
    owner, stranger = make_client(), make_client()
    accepted = invoke(owner, {"agent_type": "echo", "input": {}})
    response = stranger.get(f"/api/runs/{accepted['request_id']}")
    assert response.status_code == 404
    assert response.json()["code"] == "RUN_NOT_FOUND"
