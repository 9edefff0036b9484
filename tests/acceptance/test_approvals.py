"""The `approval` step: a signed, single-use link or the approver's own call resumes the run once;
a rejection, an expiry on a movable clock, and the refusals."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery

import tests.child_workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.runs.waits import wake_due_runs
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import THREE_DAYS, db_now, events_of, run_until_waiting
from tests.support import ApiClient, wait_for_run


def gate(
    db: Database,
    settings: Settings,
    owner: uuid.UUID,
    approver: uuid.UUID,
    *,
    workflow: str = "approval_gate",
    expires: float = 3600,
) -> uuid.UUID:
    """A run waiting for approver's decision."""
    inputs = {"approver": str(approver), "expires": expires}
    return run_until_waiting(db, settings, workflow, inputs, user_id=owner)


def links(db: Database, run_id: uuid.UUID) -> dict[str, str]:
    """The approve and reject links the approver was sent (their notification)."""
    with db.transaction() as conn:
        row = conn.execute(
            "select metadata from notifications where notification_type = 'approval_requested' "
            "and metadata ->> 'run_id' = %s",
            (str(run_id),),
        ).fetchone()
    assert row is not None, "the approver was not notified"
    return {"approve": row["metadata"]["approve"], "reject": row["metadata"]["reject"]}


def test_approving_by_link_resumes_the_run_once(
    worker: Any,
    client: ApiClient,
    anonymous: ApiClient,
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
) -> None:
    approver = uuid.uuid4()
    run_id = gate(db, settings, user_id, approver)
    link = links(db, run_id)["approve"]

    first = anonymous.post(link)
    second = anonymous.post(link)
    done = wait_for_run(client, str(run_id))

    assert first.status_code == 200, first.text
    assert first.json() == {
        "workflow_run_id": str(run_id),
        "status": "queued",
        "step": "sign_off",
        "decision": "approved",
    }
    assert second.status_code == 409
    assert second.json()["code"] == "APPROVAL_ALREADY_DECIDED"
    assert done["status"] == "completed", done
    output = done["steps"][0]["output"]
    assert (output["decision"], output["approver"], output["comment"]) == (
        "approved",
        str(approver),
        None,
    )
    assert output["decided_at"]
    assert done["output"] == {"decision": "approved"}
    resumed = [e for e in events_of(client, str(run_id)) if e["event"] == "step_resumed"]
    assert len(resumed) == 1


def test_two_decisions_at_once_decide_once(
    client: ApiClient, anonymous: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())
    both = links(db, run_id)
    start = threading.Barrier(2)
    answers: list[Any] = []

    def send(decision: str) -> None:
        start.wait()
        answers.append(anonymous.post(both[decision]))

    threads = [threading.Thread(target=send, args=(d,)) for d in ("approve", "reject")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answer.status_code for answer in answers) == [200, 409]
    refused = next(answer for answer in answers if answer.status_code == 409).json()
    assert refused["code"] == "APPROVAL_ALREADY_DECIDED"
    resumed = [e for e in events_of(client, str(run_id)) if e["event"] == "step_resumed"]
    assert len(resumed) == 1


def test_the_waiting_event_shows_the_approver_but_no_link(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    approver = uuid.uuid4()
    run_id = gate(db, settings, user_id, approver)

    waiting = next(e for e in events_of(client, str(run_id)) if e["event"] == "step_waiting")
    step = client.get(f"/api/runs/{run_id}").json()["steps"][0]

    assert waiting["data"]["kind"] == "approval"
    assert waiting["data"]["approver"] == str(approver)
    assert waiting["data"]["message"] == "Ship it?"
    # The owner reads both: a link there would let them approve their own run.
    assert "/api/approvals/" not in json.dumps([waiting, step])


def test_the_approver_is_sent_both_links_as_a_notification(
    make_client: Callable[..., ApiClient], user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    approver = uuid.uuid4()
    run_id = gate(db, settings, user_id, approver)

    mine = make_client(approver).get("/api/notifications").json()["notifications"]
    owners = make_client(user_id).get("/api/notifications").json()["notifications"]

    [note] = [n for n in mine if n["notification_type"] == "approval_requested"]
    assert note["metadata"]["run_id"] == str(run_id)
    assert note["metadata"]["approve"].startswith("/api/approvals/")
    assert note["metadata"]["approve"].endswith("?decision=approve")
    assert note["metadata"]["reject"].endswith("?decision=reject")
    assert note["action_url"] == note["metadata"]["approve"]
    assert [n for n in owners if n["notification_type"] == "approval_requested"] == []


def test_a_rejection_is_the_steps_output_and_the_run_goes_on(
    worker: Any,
    client: ApiClient,
    anonymous: ApiClient,
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())
    link = links(db, run_id)["reject"]

    answer = anonymous.post(link, json={"comment": "not on a Friday"})
    done = wait_for_run(client, str(run_id))

    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"] == "rejected"
    assert done["status"] == "completed", done
    assert done["steps"][0]["output"]["decision"] == "rejected"
    assert done["steps"][0]["output"]["comment"] == "not on a Friday"
    assert done["output"] == {"decision": "rejected"}


def test_a_rejection_with_on_reject_fail_fails_the_run(
    client: ApiClient, anonymous: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4(), workflow="approval_gate_strict")
    link = links(db, run_id)["reject"]

    answer = anonymous.post(link)
    view = client.get(f"/api/runs/{run_id}").json()

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "failed"
    assert view["status"] == "failed"
    assert view["error_code"] == "APPROVAL_REJECTED"
    assert [s["status"] for s in view["steps"]] == ["failed", "skipped"]


def test_the_named_approver_decides_with_their_own_token(
    worker: Any,
    client: ApiClient,
    make_client: Callable[..., ApiClient],
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
) -> None:
    approver = uuid.uuid4()
    run_id = gate(db, settings, user_id, approver)

    answer = make_client(approver).post(
        f"/api/runs/{run_id}/approval", json={"decision": "approve", "comment": "go"}
    )
    done = wait_for_run(client, str(run_id))

    assert answer.status_code == 200, answer.text
    assert done["steps"][0]["output"]["decision"] == "approved"
    assert done["steps"][0]["output"]["decided_by"] == str(approver)


def test_a_stranger_is_told_the_run_does_not_exist_and_it_keeps_waiting(
    client: ApiClient,
    make_client: Callable[..., ApiClient],
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())

    answer = make_client(uuid.uuid4()).post(
        f"/api/runs/{run_id}/approval", json={"decision": "approve"}
    )

    assert answer.status_code == 404
    assert answer.json()["code"] == "RUN_NOT_FOUND"
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "waiting"


def test_the_runs_owner_is_not_its_approver(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())

    answer = client.post(f"/api/runs/{run_id}/approval", json={"decision": "approve"})

    assert answer.status_code == 403
    assert answer.json()["code"] == "NOT_THE_APPROVER"
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "waiting"


def test_a_tampered_link_is_refused_and_the_run_keeps_waiting(
    client: ApiClient, anonymous: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())
    path, _, query = links(db, run_id)["approve"].partition("?")
    body, _, mac = path.removeprefix("/api/approvals/").partition(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")

    answers = [
        anonymous.post(f"/api/approvals/{flipped}.{mac}?{query}"),
        anonymous.post(f"/api/approvals/{body}.{mac[:-2]}?{query}"),
        anonymous.post(f"/api/approvals/not-a-token?{query}"),
    ]

    assert [a.status_code for a in answers] == [403, 403, 403], [a.text for a in answers]
    assert {a.json()["code"] for a in answers} == {"APPROVAL_LINK_INVALID"}
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "waiting"


def test_a_decision_is_required(
    client: ApiClient, anonymous: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4())
    path = links(db, run_id)["approve"].partition("?")[0]

    answer = anonymous.post(path, json={"comment": "no decision"})

    assert answer.status_code == 400
    assert answer.json()["code"] == "INVALID_INPUT"


def test_an_approval_of_three_days_expires_on_a_moved_clock_and_the_run_goes_on(
    worker: Any,
    celery_app: Celery,
    client: ApiClient,
    anonymous: ApiClient,
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4(), expires=THREE_DAYS)
    link = links(db, run_id)["approve"]
    now = db_now(db)

    early = wake_due_runs(db, now=now + timedelta(days=2))
    late = wake_due_runs(db, now=now + timedelta(days=3, minutes=1))
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run_id)])  # as the beat job does
    done = wait_for_run(client, str(run_id))
    after = anonymous.post(link)

    assert [r.run_id for r in early] == []
    assert [r.run_id for r in late] == [run_id]
    assert done["status"] == "completed", done
    assert done["steps"][0]["output"]["decision"] == "expired"
    # The timeout decided: the link is refused as expired, not as decided.
    assert after.status_code == 410
    assert after.json()["code"] == "APPROVAL_EXPIRED"


def test_an_expired_approval_with_on_timeout_fail_fails_the_run(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = gate(db, settings, user_id, uuid.uuid4(), workflow="approval_gate_strict")

    wake_due_runs(db, now=db_now(db) + timedelta(hours=2))
    view = client.get(f"/api/runs/{run_id}").json()

    assert view["status"] == "failed"
    assert view["error_code"] == "WAIT_TIMEOUT"
    assert view["steps"][0]["status"] == "failed"
