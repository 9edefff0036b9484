"""Seed 000 (Witchcraft) agent sessions and messages, called as its document writes them: the
rows it documents, sequence numbers, and a message's tokens and cost recorded as usage once."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor.db import Database
from tests.acceptance.witchcraft_calls import assert_error, ledger, new_session, track
from tests.support import ApiClient

ClientFactory = Callable[..., ApiClient]


def test_create_agent_session_returns_the_row(client: ApiClient, user_id: uuid.UUID) -> None:
    response = client.post(
        "/api/agent/session",
        json={"agentMode": "implement", "projectPath": "/src/app", "projectName": "app"},
    )

    assert response.status_code == 200, response.text
    row = response.json()
    documented = (row["user_id"], row["agent_mode"], row["project_path"], row["project_name"])
    assert documented == (str(user_id), "implement", "/src/app", "app")
    assert client.get(f"/api/agent/sessions/{row['id']}").json() == row


def test_messages_take_the_next_sequence_number_and_return_the_row(
    client: ApiClient, user_id: uuid.UUID
) -> None:
    session = new_session(client)
    sent = [
        {"sessionId": session, "role": "user", "content": "Why does it fail?"},
        {"sessionId": session, "role": "assistant", "content": "A typo.", "tokens": 42,
         "costUsd": 0.0021},
    ]  # fmt: skip

    rows = [client.post("/api/agent/message", json=body) for body in sent]

    assert [r.status_code for r in rows] == [200, 200], rows[-1].text
    first, answer = (r.json() for r in rows)
    assert (first["sequence_number"], answer["sequence_number"]) == (1, 2)
    owner = (answer["session_id"], answer["user_id"], answer["role"])
    assert owner == (session, str(user_id), "assistant")
    assert (answer["tokens"], answer["cost_usd"], answer["ai_request_id"]) == (42, 0.0021, None)
    assert first["tokens"] is None
    listed = client.get(f"/api/agent/sessions/{session}/messages").json()["messages"]
    assert [m["id"] for m in listed] == [first["id"], answer["id"]]


@pytest.mark.parametrize("key", ["msg-1", "k" * 255], ids=["short key", "longest key"])
def test_a_messages_tokens_and_cost_are_recorded_once(
    client: ApiClient, db: Database, user_id: uuid.UUID, key: str
) -> None:
    session = new_session(client)
    body = {"sessionId": session, "role": "assistant", "content": "Done.", "tokens": 42,
            "costUsd": 0.0021, "model": "gpt-4o"}  # fmt: skip
    headers = {"Idempotency-Key": key}

    first = client.post("/api/agent/message", json=body, headers=headers)
    retry = client.post("/api/agent/message", json=body, headers=headers)

    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    reused = client.post("/api/agent/message", json={**body, "content": "Other"}, headers=headers)
    assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED")
    events = ledger(db, user_id)["events"]
    assert [(e["completion_tokens"], e["output_cost_micro_usd"]) for e in events] == [(42, 2100)]
    assert first.json()["usage_event_id"] == events[0]["id"]
    messages = client.get(f"/api/agent/sessions/{session}/messages").json()["messages"]
    assert len(messages) == 1


def test_a_message_naming_a_tracked_request_records_no_usage_again(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    session = new_session(client)
    request_id = track(client, sessionId=session).json()["requestId"]

    response = client.post(
        "/api/agent/message",
        json={"sessionId": session, "role": "assistant", "content": "Done.",
              "aiRequestId": request_id, "tokens": 150, "costUsd": 0.0},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    row = response.json()
    assert (row["ai_request_id"], row["usage_event_id"]) == (request_id, None)
    assert [e["id"] for e in ledger(db, user_id)["events"]] == [request_id]


BAD_MESSAGES: list[tuple[dict[str, Any], int, str]] = [
    ({"sessionId": "theirs"}, 404, "SESSION_NOT_FOUND"), ({"userId": "theirs"}, 403, "FORBIDDEN"),
    ({"aiRequestId": "theirs"}, 404, "AI_REQUEST_NOT_FOUND"),
    ({"aiRequestId": 2**62}, 404, "AI_REQUEST_NOT_FOUND"),
    ({"role": "narrator"}, 400, "INVALID_INPUT"),
    ({"content": ""}, 400, "INVALID_INPUT"), ({"costUsd": -1}, 400, "INVALID_INPUT"),
    ({"tokens": 1.5}, 400, "INVALID_INPUT"), ({"sessionId": "not-a-uuid"}, 400, "INVALID_INPUT"),
]  # fmt: skip


def test_bad_messages_are_refused_and_record_nothing(
    make_client: ClientFactory, client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    stranger = make_client()
    theirs = {
        "sessionId": new_session(stranger),
        "aiRequestId": track(stranger).json()["requestId"],
        "userId": str(uuid.uuid4()),
    }
    session = new_session(client)
    for change, status, code in BAD_MESSAGES:
        body = {"sessionId": session, "role": "assistant", "content": "Done.", "tokens": 5}
        body.update({k: theirs[k] if v == "theirs" else v for k, v in change.items()})
        assert_error(client.post("/api/agent/message", json=body), status, code)
    assert ledger(db, user_id)["events"] == []
    assert client.get(f"/api/agent/sessions/{session}/messages").json()["messages"] == []


def test_one_message_key_sent_at_once_makes_one_message_and_one_usage_event(
    make_client: ClientFactory, client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    session = new_session(client)
    body = {"sessionId": session, "role": "assistant", "content": "Done.", "tokens": 7}

    def send(_: int) -> Any:  # a client (HTTP session) per thread, as separate processes would
        return make_client(user_id).post(
            "/api/agent/message", json=body, headers={"Idempotency-Key": "same"}
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(send, range(4)))

    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(ledger(db, user_id)["events"]) == 1
    assert len(client.get(f"/api/agent/sessions/{session}/messages").json()["messages"]) == 1
