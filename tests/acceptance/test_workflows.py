"""Workflows through the HTTP API and a real worker, against a scripted OpenAI-compatible server."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.settings import Settings
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, LiveServer, new_run, token_for, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")
USES_FAKE_LLM = True
# Quick cancel checks; outputs over 4 KiB are stored outside the row.
SETTINGS = {
    "cancel_check_seconds": 0.05,
    "workflow_wait_seconds": 10,
    "output_inline_max_bytes": 4096,
}


def execute(
    client: ApiClient,
    workflow_id: str,
    inputs: dict[str, Any],
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    """POST /api/agents/workflows/execute; extra keys go into the body (`async`, `user_id`)."""
    return client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": workflow_id, "inputs": inputs, **extra},
        headers=headers,
    )


def test_a_workflow_runs_every_step_in_order_and_answers_with_its_outputs(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    """`async: false` waits for the run and answers 200 with the outputs."""
    response = execute(client, "write_brief", {"topic": "durable queues"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["outputs"] == {
        "topic": "durable queues",
        "brief": "reply to: draft from reply to: outline durable queues",
    }
    assert fake_llm.completed == {
        "outline durable queues": 1,
        "draft from reply to: outline durable queues": 1,
    }


def test_a_run_view_shows_steps_with_timings_usage_and_progress(client: ApiClient) -> None:
    run_id = execute(client, "write_brief", {"topic": "durable queues"}).json()["workflow_run_id"]

    view = client.get(f"/api/runs/{run_id}").json()

    assert (view["status"], view["progress"], view["attempts"]) == ("completed", 1.0, 1)
    assert [(s["name"], s["status"], s["attempt"]) for s in view["steps"]] == [
        ("outline", "completed", 1),
        ("draft", "completed", 1),
        ("package", "completed", 1),
    ]
    outline = view["steps"][0]
    assert outline["duration_ms"] >= 0
    assert outline["started_at"] <= outline["finished_at"]
    assert outline["usage"]["prompt_tokens"] == 3
    assert outline["usage"]["completion_tokens"] == 6
    # gpt-4o-mini: 3 tokens at 0.15 $/M + 6 at 0.60 $/M = 4.05 micro-USD, rounded up.
    assert outline["usage"]["cost_micro_usd"] == 5
    assert outline["usage"]["provider_request_id"].startswith("req-")
    assert view["steps"][2]["usage"] is None


def test_async_execute_answers_202_at_once_with_where_to_follow(client: ApiClient) -> None:
    response = execute(client, "wait_then_call", {"seconds": 0.5}, **{"async": True})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] in ("queued", "running")
    assert body["links"]["self"] == f"/api/runs/{body['workflow_run_id']}"
    assert wait_for_run(client, body["workflow_run_id"])["status"] == "completed"


def test_a_synchronous_execute_answers_202_when_the_run_outlasts_the_wait(
    settings: Settings,
) -> None:
    impatient = settings.model_copy(update={"workflow_wait_seconds": 0.3})
    with LiveServer(impatient) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))

        response = execute(client, "wait_then_call", {"seconds": 1})

        assert response.status_code == 202
        assert response.json()["status"] in ("queued", "running")
        assert wait_for_run(client, response.json()["workflow_run_id"])["status"] == "completed"


def test_steps_of_a_dag_run_after_what_they_depend_on(client: ApiClient) -> None:
    body = execute(client, "fan_in", {"topic": "queues"}).json()

    assert body["outputs"] == "reply to: pros of queues | reply to: cons of queues"
    view = client.get(f"/api/runs/{body['workflow_run_id']}").json()
    assert [s["name"] for s in view["steps"]] == ["pros", "cons", "combine"]


def test_the_same_idempotency_key_returns_the_first_workflow_run(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    headers = {"Idempotency-Key": "brief-42"}
    first = execute(client, "write_brief", {"topic": "durable queues"}, headers=headers)
    second = execute(client, "write_brief", {"topic": "durable queues"}, headers=headers)

    assert first.json()["workflow_run_id"] == second.json()["workflow_run_id"]
    assert fake_llm.completed["outline durable queues"] == 1


def test_an_unknown_workflow_is_404_unknown_workflow(client: ApiClient) -> None:
    response = execute(client, "no_such_flow", {})

    assert response.status_code == 404
    assert response.json()["code"] == "UNKNOWN_WORKFLOW"


def test_invalid_inputs_are_refused_at_submit_naming_the_field(client: ApiClient) -> None:
    response = execute(client, "write_brief", {"topic": "x"})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["topic"]


def test_a_transient_failure_is_retried_until_the_step_succeeds(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    fake_llm.script("outline retries", 500, 429)

    body = execute(client, "write_brief", {"topic": "retries"}).json()

    assert body["status"] == "completed"
    assert fake_llm.received["outline retries"] == 3
    view = client.get(f"/api/runs/{body['workflow_run_id']}").json()
    assert view["steps"][0]["attempt"] == 3
    events = client.get(f"/api/runs/{body['workflow_run_id']}/events").json()["events"]
    retries = [e["data"] for e in events if e["event"] == "step_retrying"]
    assert [(r["failed_attempt"], r["error_code"]) for r in retries] == [
        (1, "LLM_ERROR"),
        (2, "LLM_ERROR"),
    ]


def test_a_step_that_keeps_failing_fails_the_run_after_its_last_attempt(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    fake_llm.script("outline doomed", 500, 500, 500)

    body = execute(client, "write_brief", {"topic": "doomed"}).json()

    assert body["status"] == "failed"
    assert body["error_code"] == "LLM_ERROR"
    assert body["error"].startswith("step 'outline' failed after 3 attempt(s): LLM answered 500")
    view = client.get(f"/api/runs/{body['workflow_run_id']}").json()
    assert [s["status"] for s in view["steps"]] == ["failed", "skipped", "skipped"]
    assert fake_llm.received["outline doomed"] == 3
    events = client.get(f"/api/runs/{body['workflow_run_id']}/events").json()["events"]
    failed = [e["data"] for e in events if e["event"] == "step_failed"]
    assert [(f["step"], f["error_code"]) for f in failed] == [("outline", "LLM_ERROR")]


def test_a_client_error_is_not_retried(client: ApiClient, fake_llm: FakeLlm) -> None:
    fake_llm.script("outline refused", 400)

    body = execute(client, "write_brief", {"topic": "refused"}).json()

    assert body["status"] == "failed"
    assert fake_llm.received["outline refused"] == 1


def test_a_step_that_outlives_its_timeout_fails_with_step_timeout(client: ApiClient) -> None:
    body = execute(client, "stubborn_sleep", {"seconds": 0.8}).json()

    assert body["status"] == "failed"
    assert body["error_code"] == "STEP_TIMEOUT"
    assert body["error"] == "step 'sleep' failed after 2 attempt(s): step 'sleep' timed out"


def test_cancelling_mid_run_stops_inside_the_long_step_and_skips_the_rest(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    run_id = execute(client, "wait_then_call", {"seconds": 30}, **{"async": True}).json()[
        "workflow_run_id"
    ]
    wait_for_run(client, run_id, until=frozenset({"running"}))

    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 200
    view = wait_for_run(client, run_id, timeout=5)

    assert view["status"] == "cancelled"
    assert [(s["name"], s["status"]) for s in view["steps"]] == [
        ("wait", "cancelled"),
        ("call", "cancelled"),
    ]
    assert fake_llm.received["after the wait"] == 0
    assert all(s["usage"] is None for s in view["steps"])


def test_a_large_output_is_stored_outside_the_row_and_referenced_by_url(
    client: ApiClient, settings: Settings
) -> None:
    body = execute(client, "big_output", {"size": 10_000}).json()

    view = client.get(f"/api/runs/{body['workflow_run_id']}").json()
    step = view["steps"][0]
    assert step["output"]["bytes"] > 10_000
    assert step["output_url"].startswith("file://")
    assert step["output_url"] == step["output"]["stored_at"]
    stored = Path(step["output_url"].removeprefix("file://"))
    assert stored.is_relative_to((settings.data_dir / "artifacts").resolve())
    assert len(stored.read_text()) == step["output"]["bytes"]
    assert view["output_url"] is not None
    full = client.get(f"/api/runs/{body['workflow_run_id']}/steps/make/output").json()
    assert full["output"] == {"blob": "x" * 10_000}
    assert client.get(f"/api/runs/{body['workflow_run_id']}/output").json() == full


def test_someone_elses_output_is_not_found(client: ApiClient, make_client: Any) -> None:
    run_id = execute(client, "big_output", {"size": 10}).json()["workflow_run_id"]

    assert make_client().get(f"/api/runs/{run_id}/output").status_code == 404
    assert client.get(f"/api/runs/{run_id}/steps/nope/output").status_code == 404


def test_the_event_log_replays_from_a_sequence_number(client: ApiClient) -> None:
    run_id = execute(client, "write_brief", {"topic": "events"}).json()["workflow_run_id"]

    everything = client.get(f"/api/runs/{run_id}/events").json()
    later = client.get(f"/api/runs/{run_id}/events", params={"since": 3}).json()

    seqs = [e["seq"] for e in everything["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e["seq"] for e in later["events"]] == seqs[3:]
    assert later["next_since"] == seqs[-1]
    assert everything["events"][-1]["data"]["status"] == "completed"
    assert [e["data"]["step"] for e in everything["events"] if e["event"] == "step_completed"] == [
        "outline",
        "draft",
        "package",
    ]


def test_someone_elses_run_events_are_not_found(client: ApiClient, make_client: Any) -> None:
    run_id = execute(client, "write_brief", {"topic": "private"}).json()["workflow_run_id"]

    response = make_client().get(f"/api/runs/{run_id}/events")

    assert response.status_code == 404


def test_workflows_are_listed_with_their_input_schemas_and_steps(client: ApiClient) -> None:
    listed = {w["workflow_id"]: w for w in client.get("/api/workflows").json()["workflows"]}

    brief = listed["write_brief"]
    assert brief["input_schema"]["required"] == ["topic"]
    assert [s["name"] for s in brief["steps"]] == ["outline", "draft", "package"]
    assert "research_brief" in listed  # from the workflows/ folder
    assert "echo" not in listed  # agent types are listed under /api/agents


def test_a_run_in_a_session_appends_its_reply_to_the_session(client: ApiClient) -> None:
    session = client.post("/api/agent/sessions", json={"agent_mode": "chat"}).json()
    client.post(
        f"/api/agent/sessions/{session['id']}/messages", json={"role": "user", "content": "hi"}
    )

    accepted = client.post(
        "/api/agents/invoke",
        json={"agent_type": "chat_agent", "input": {"message": "hi"}, "session_id": session["id"]},
    ).json()
    wait_for_run(client, accepted["request_id"])

    messages = client.get(f"/api/agent/sessions/{session['id']}/messages").json()["messages"]
    assert [(m["sequence_number"], m["role"], m["content"]) for m in messages] == [
        (1, "user", "hi"),
        (2, "assistant", "reply to: hi"),
    ]
    assert messages[1]["run_id"] == accepted["request_id"]


def test_a_run_cannot_join_someone_elses_session(client: ApiClient, make_client: Any) -> None:
    session = make_client().post("/api/agent/sessions", json={"agent_mode": "chat"}).json()

    response = client.post(
        "/api/agents/invoke",
        json={"agent_type": "chat_agent", "input": {"message": "hi"}, "session_id": session["id"]},
    )

    assert response.status_code == 404
    assert response.json()["code"] == "SESSION_NOT_FOUND"


def test_another_users_id_in_the_body_is_forbidden(client: ApiClient) -> None:
    response = execute(client, "write_brief", {"topic": "durable"}, user_id=str(uuid.uuid4()))

    assert response.status_code == 403


def test_the_same_message_delivered_twice_runs_the_workflow_once(
    celery_app: Celery, db: Database, client: ApiClient, user_id: uuid.UUID, fake_llm: FakeLlm
) -> None:
    run = new_run(db, "write_brief", {"topic": "twice"}, user_id=user_id)

    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    view = wait_for_run(client, str(run.id))

    assert view["status"] == "completed"
    assert view["attempts"] == 1
    assert fake_llm.completed == {"outline twice": 1, "draft from reply to: outline twice": 1}


def test_a_run_that_exceeds_its_own_timeout_fails_with_run_timeout(client: ApiClient) -> None:
    body = execute(client, "outlives_the_run", {"seconds": 10}).json()

    assert body["status"] == "failed"
    assert body["error_code"] == "RUN_TIMEOUT"
    assert "0.5 s timeout during step 'wait'" in body["error"]


def test_a_workflow_defined_in_a_yaml_file_runs_end_to_end(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    body = execute(client, "research_brief", {"topic": "webhooks"}).json()

    assert body["status"] == "completed", body
    assert body["outputs"]["topic"] == "webhooks"
    assert body["outputs"]["outline"] == "reply to: Outline webhooks for engineers."
    assert body["outputs"]["brief"].startswith("reply to: Write a one-page brief for engineers")


def test_the_summarize_agent_asks_the_model_for_a_bounded_summary(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    accepted = client.post(
        "/api/agents/invoke",
        json={"agent_type": "summarize", "input": {"text": "long text", "max_words": 20}},
    ).json()

    run = wait_for_run(client, accepted["request_id"])

    prompt = "Summarise in at most 20 words:\n\nlong text"
    assert run["output"]["text"] == f"reply to: {prompt}"
    assert fake_llm.completed == {prompt: 1}


def test_an_idempotency_key_reused_for_a_different_request_is_409(client: ApiClient) -> None:
    headers = {"Idempotency-Key": "reused"}
    execute(client, "write_brief", {"topic": "first topic"}, headers=headers, **{"async": True})

    response = execute(client, "write_brief", {"topic": "other topic"}, headers=headers)

    assert response.status_code == 409
    assert response.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
