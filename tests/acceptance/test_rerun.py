"""Rerun and fork: a new run from a finished run's step on, the earlier steps reused from its
checkpoints (not run, not charged again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor import workflows
from conveyor.db import Database
from conveyor.ops.maintenance import delete_orphaned_artifacts
from conveyor.settings import Settings
from conveyor.workflows import StepSpec, Workflow, definitions
from tests.fake_llm import FakeLlm
from tests.support import (
    ApiClient,
    LiveServer,
    finish_with_reaper,
    new_run,
    token_for,
    wait_for_run,
    wait_until,
    worker_subprocess,
)
from tests.workflows_for_tests import FAST_RETRY, TopicInput

USES_FAKE_LLM = True
LEASE_SECONDS = 5
# Short leases so the killed worker's rerun is taken over within seconds.
SETTINGS = {"run_lease_seconds": LEASE_SECONDS, "cancel_check_seconds": 0.1}
TOPIC = "rerun topics"
OUTLINE = f"outline {TOPIC}"
DRAFT = f"draft from reply to: {OUTLINE}"


def finished_brief(client: ApiClient) -> dict[str, Any]:
    """A completed run of write_brief (outline, draft: model calls; package: a transform)."""
    answer = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "write_brief", "inputs": {"topic": TOPIC}},
    )
    assert answer.status_code == 200, answer.text
    return wait_for_run(client, answer.json()["workflow_run_id"])


def rerun(client: ApiClient, run_id: str, **body: Any) -> Any:
    """POST /api/runs/<id>/rerun with body (headers= passes headers)."""
    headers = body.pop("headers", {})
    return client.post(f"/api/runs/{run_id}/rerun", json=body, headers=headers)


def charged_positions(db: Database, run_id: str) -> list[int]:
    """The step positions of the usage events recorded for a run."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select step_position from usage_events where run_id = %s order by step_position",
            (run_id,),
        ).fetchall()
    return [row["step_position"] for row in rows]


def write_brief_with(changed: str) -> Workflow:
    """write_brief as a later deploy might define it: step `changed` with another prompt."""
    prompts = {
        "outline": "outline {{ inputs.topic }}",
        "draft": "draft from {{ steps.outline.output.text }}",
    }
    prompts[changed] = f"v2 {prompts[changed]}"
    return Workflow(
        name="write_brief",
        description="write_brief, changed",
        input_model=TopicInput,
        steps=[
            StepSpec(name=name, kind="llm", config={"prompt": prompt}, retry=FAST_RETRY)
            for name, prompt in prompts.items()
        ]
        + [workflows.get("write_brief").steps[-1]],
    )


def test_a_rerun_from_the_middle_step_runs_it_and_the_rest_and_charges_only_those(
    client: ApiClient, worker: Any, fake_llm: FakeLlm, db: Database
) -> None:
    old = finished_brief(client)

    answer = rerun(client, old["id"], from_step="draft")
    new = wait_for_run(client, answer.json()["id"])

    assert answer.status_code == 202, answer.text
    assert (answer.json()["rerun_of"], answer.json()["rerun_from_step"]) == (old["id"], "draft")
    assert new["status"] == "completed", new
    assert (new["rerun_of"], new["rerun_from_step"]) == (old["id"], "draft")
    assert fake_llm.completed == {OUTLINE: 1, DRAFT: 2}
    steps = {step["name"]: step for step in new["steps"]}
    assert (steps["outline"]["reused_from"], steps["outline"]["attempt"]) == (old["id"], 0)
    assert steps["outline"]["output"] == old["steps"][0]["output"]
    assert steps["outline"]["usage"] is None
    assert [steps[name]["reused_from"] for name in ("draft", "package")] == [None, None]
    assert [steps[name]["attempt"] for name in ("draft", "package")] == [1, 1]
    assert new["output"] == old["output"]
    assert charged_positions(db, old["id"]) == [0, 1]
    assert charged_positions(db, new["id"]) == [1]


def test_a_fork_runs_with_the_new_inputs_over_the_reused_outputs(
    client: ApiClient, worker: Any, fake_llm: FakeLlm
) -> None:
    old = finished_brief(client)
    calls = fake_llm.received.total()

    answer = rerun(client, old["id"], from_step="package", inputs={"topic": "a new topic"})
    new = wait_for_run(client, answer.json()["id"])

    assert new["status"] == "completed", new
    assert new["input"] == {"topic": "a new topic"}
    assert new["output"] == {"topic": "a new topic", "brief": old["output"]["brief"]}
    assert fake_llm.received.total() == calls


def test_a_fork_with_inputs_the_workflow_refuses_is_400(client: ApiClient, worker: Any) -> None:
    old = finished_brief(client)

    answer = rerun(client, old["id"], from_step="draft", inputs={"topic": 1})

    assert (answer.status_code, answer.json()["code"]) == (400, "INVALID_INPUT")


def test_a_rerun_from_a_step_the_workflow_does_not_have_is_400(
    client: ApiClient, worker: Any
) -> None:
    old = finished_brief(client)

    answer = rerun(client, old["id"], from_step="polish")

    assert (answer.status_code, answer.json()["code"]) == (400, "UNKNOWN_STEP")
    assert "outline, draft, package" in answer.json()["error"]


def test_someone_elses_run_cannot_be_rerun_and_is_404_like_a_missing_one(
    client: ApiClient, make_client: Callable[..., ApiClient], worker: Any
) -> None:
    old = finished_brief(client)

    stranger = rerun(make_client(), old["id"], from_step="draft")
    missing = rerun(client, str(uuid.uuid4()), from_step="draft")

    assert (stranger.status_code, stranger.json()["code"]) == (404, "RUN_NOT_FOUND")
    assert (missing.status_code, missing.json()["code"]) == (404, "RUN_NOT_FOUND")


def test_an_admin_may_rerun_a_users_run_which_stays_the_users(
    client: ApiClient, make_client: Callable[..., ApiClient], worker: Any, db: Database
) -> None:
    old = finished_brief(client)
    admin = make_client(token=token_for(uuid.uuid4(), admin=True))

    answer = rerun(admin, old["id"], from_step="package")

    assert answer.status_code == 202, answer.text
    assert wait_for_run(client, answer.json()["id"])["status"] == "completed"
    with db.transaction() as conn:
        audit = conn.execute(
            "select subject from audit_logs where action = 'admin.run.rerun'"
        ).fetchall()
    assert audit == [{"subject": old["id"]}]


def test_a_run_in_flight_cannot_be_rerun(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    queued = new_run(db, "write_brief", {"topic": TOPIC}, user_id=user_id)

    answer = rerun(client, str(queued.id), from_step="draft")

    assert (answer.status_code, answer.json()["code"]) == (409, "RUN_IN_FLIGHT")


def test_a_step_that_did_not_complete_cannot_be_reused(
    client: ApiClient, worker: Any, fake_llm: FakeLlm
) -> None:
    fake_llm.script(DRAFT, 400)  # not retryable: the run fails at draft
    answer = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "write_brief", "inputs": {"topic": TOPIC}},
    )
    old = wait_for_run(client, answer.json()["workflow_run_id"])

    refused = rerun(client, old["id"], from_step="package")
    allowed = rerun(client, old["id"], from_step="draft")

    assert old["status"] == "failed"
    assert (refused.status_code, refused.json()["code"]) == (409, "STEP_NOT_REUSABLE")
    assert allowed.status_code == 202, allowed.text
    assert wait_for_run(client, allowed.json()["id"])["status"] == "completed"


def test_a_step_changed_since_the_run_is_not_reused(
    client: ApiClient, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = finished_brief(client)
    monkeypatch.setitem(definitions._REGISTRY, "write_brief", write_brief_with("outline"))

    answer = rerun(client, old["id"], from_step="draft")

    assert (answer.status_code, answer.json()["code"]) == (409, "DEFINITION_CHANGED")
    assert "'outline'" in answer.json()["error"]


def test_a_step_changed_since_the_run_may_itself_be_rerun(
    client: ApiClient, worker: Any, fake_llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = finished_brief(client)
    monkeypatch.setitem(definitions._REGISTRY, "write_brief", write_brief_with("draft"))

    answer = rerun(client, old["id"], from_step="draft")
    new = wait_for_run(client, answer.json()["id"])

    assert new["status"] == "completed", new
    assert fake_llm.completed == {OUTLINE: 1, DRAFT: 1, f"v2 {DRAFT}": 1}


def test_a_retried_rerun_with_the_same_key_is_the_same_new_run(
    client: ApiClient, worker: Any, db: Database
) -> None:
    old = finished_brief(client)
    key = {"Idempotency-Key": "rerun-once"}

    first = rerun(client, old["id"], from_step="draft", headers=key)
    again = rerun(client, old["id"], from_step="draft", headers=key)
    other = rerun(client, old["id"], from_step="package", headers=key)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert (other.status_code, other.json()["code"]) == (409, "IDEMPOTENCY_KEY_REUSED")
    with db.transaction() as conn:
        reruns = conn.execute(
            "select id from workflow_runs where rerun_of = %s", (old["id"],)
        ).fetchall()
    assert [str(row["id"]) for row in reruns] == [first.json()["id"]]


def test_a_reused_stored_output_outlives_the_old_run(
    client: ApiClient, worker: Any, db: Database, settings: Settings
) -> None:
    size = settings.output_inline_max_bytes * 2
    answer = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "big_then_measure", "inputs": {"size": size}},
    )
    old = wait_for_run(client, answer.json()["workflow_run_id"])
    new = wait_for_run(client, rerun(client, old["id"], from_step="measure").json()["id"])

    with db.transaction() as conn:
        conn.execute("delete from workflow_runs where id = %s", (old["id"],))
    delete_orphaned_artifacts(db, settings)
    output = client.get(f"/api/runs/{new['id']}/steps/make/output")

    assert new["status"] == "completed", new
    assert new["id"] in new["steps"][0]["output_url"]
    assert output.status_code == 200, output.text
    assert len(output.json()["output"]["blob"]) == size


def test_a_rerun_whose_worker_is_killed_completes_once_with_its_reused_steps_intact(
    request: pytest.FixtureRequest,
    client: ApiClient,
    fake_llm: FakeLlm,
    settings: Settings,
    celery_app: Celery,
    db: Database,
) -> None:
    """kill -9 during the rerun's first executed step: another worker resumes it there."""
    inputs = {"server": fake_llm.url, "key": "k"}
    with worker_subprocess(settings, "runs") as process:
        answer = client.post(
            "/api/agents/workflows/execute",
            json={"workflow_id": "call_maybe_hold_call", "inputs": inputs},
        )
        old = wait_for_run(client, answer.json()["workflow_run_id"])
        # A fork whose first executed step the test server holds until its caller dies.
        forked = rerun(client, old["id"], from_step="maybe_hold", inputs={**inputs, "hold": True})
        assert fake_llm.holding.wait(30), "the worker never reached the rerun's held step"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    wait_until(lambda: fake_llm.abandoned["k"] == 1, 10, "the held request being dropped")
    request.getfixturevalue("worker")  # a second worker, on every queue
    run_id = forked.json()["id"]
    # Beat's reaper, fired by hand: once the lease expires it hands the run to the new worker.
    view = finish_with_reaper(client, celery_app, run_id, LEASE_SECONDS + 20)

    assert old["status"] == "completed", old
    assert view["status"] == "completed", view
    assert view["attempts"] == 2
    assert [(s["name"], s["attempt"], s["reused_from"]) for s in view["steps"]] == [
        ("first", 0, old["id"]),
        ("maybe_hold", 2, None),
        ("last", 1, None),
    ]
    assert view["steps"][0]["output"] == old["steps"][0]["output"]
    assert fake_llm.completed == {"first k": 1, "k": 2, "last k": 2}
    assert charged_positions(db, old["id"]) == [0, 2]
    assert charged_positions(db, run_id) == [2]


def test_conveyor_rerun_starts_the_rerun_and_follows_it(
    client: ApiClient, live_server: LiveServer, worker: Any, user_id: uuid.UUID
) -> None:
    old = finished_brief(client)

    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "rerun", old["id"], "--from", "package",
         "--inputs", '{"topic": "from the command line"}', "--follow",
         "--url", live_server.url, "--token", token_for(user_id)],
        env={k: v for k, v in os.environ.items() if k != "CONVEYOR_TOKEN"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"(rerun of {old['id']} from package)" in result.stdout
    assert "100% completed" in result.stdout
