"""Child workflows: a `workflow` step starts a child run for the same user; an awaited child's
end resumes its parent once (its output is the step's), a detached one leaves the parent going;
failures and cancels cross the link; children's usage shows on the parent; kill -9 loses
nothing."""

from __future__ import annotations

import signal
import uuid
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

import tests.child_workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.runs.waits import wake_due_runs
from tests.acceptance.durable_waits_calls import WAITING, db_now, events_of, signal_run, submit
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, finish_with_reaper, wait_for_run, wait_until, worker_subprocess

LEASE_SECONDS = 5
USES_FAKE_LLM = True
# Short leases so a dead worker's child run is taken over within seconds.
SETTINGS = {"run_lease_seconds": LEASE_SECONDS, "cancel_check_seconds": 0.1}


def child_of(client: ApiClient, parent: str) -> dict[str, Any]:
    """The parent's only child, once it has one, as the parent's view lists it."""
    kids = wait_until(
        lambda: client.get(f"/api/runs/{parent}").json()["children"], 15, "a child run"
    )
    assert len(kids) == 1, kids
    return dict(kids[0])


def usage_rows(db: Database, run_id: str) -> list[dict[str, Any]]:
    """The usage events charged to a run."""
    with db.transaction() as conn:
        return conn.execute(
            "select idempotency_key, credits_charged from usage_events where run_id = %s",
            (run_id,),
        ).fetchall()


def test_an_awaited_childs_output_becomes_the_steps_output(
    worker: Any, client: ApiClient, user_id: uuid.UUID
) -> None:
    parent = submit(client, "parent_awaits_double", {"n": 21})

    done = wait_for_run(client, parent)
    kid = done["children"][0]
    child = client.get(f"/api/runs/{kid['id']}").json()

    assert done["status"] == "completed", done
    assert done["steps"][0]["output"] == {"doubled": 42}
    assert done["output"] == {"child": {"doubled": 42}}
    assert (kid["workflow_id"], kid["status"], kid["awaited"], kid["parent_step"]) == (
        "child_double",
        "completed",
        True,
        0,
    )
    assert (child["parent_run_id"], child["parent_step"]) == (parent, 0)
    resumed = [e for e in events_of(client, parent) if e["event"] == "step_resumed"]
    assert [e["data"]["resumed_by"] for e in resumed] == ["child"]


def test_a_detached_child_is_started_and_the_parent_goes_on_with_its_id(
    worker: Any, client: ApiClient
) -> None:
    parent = submit(client, "parent_detaches_double", {"n": 5})

    done = wait_for_run(client, parent)
    child_id = done["steps"][0]["output"]["run_id"]
    child = wait_for_run(client, child_id)

    assert done["status"] == "completed", done
    assert done["output"] == {"child": {"run_id": child_id}}
    assert [(k["id"], k["awaited"]) for k in done["children"]] == [(child_id, False)]
    assert child["status"] == "completed", child
    assert child["output"] == {"doubled": 10}


def test_a_failed_child_fails_the_parents_step(worker: Any, client: ApiClient) -> None:
    parent = submit(client, "parent_awaits_refusal", {"n": 1})

    done = wait_for_run(client, parent)

    assert done["status"] == "failed", done
    assert done["error_code"] == "CHILD_FAILED"
    assert "refused on purpose" in done["error"]
    assert [s["status"] for s in done["steps"]] == ["failed", "skipped"]
    assert done["children"][0]["status"] == "failed"


def test_a_signalled_child_resumes_its_parent_with_its_output(
    worker: Any, client: ApiClient
) -> None:
    parent = submit(client, "parent_awaits_signal", {"ticket": "C-1"})
    child = child_of(client, parent)["id"]
    wait_for_run(client, child, until=WAITING)

    answer = signal_run(client, child, {"match": "C-1", "payload": {"by": "ann"}})
    done = wait_for_run(client, parent)

    assert answer.status_code == 200, answer.text
    assert done["status"] == "completed", done
    assert done["steps"][0]["output"] == {"approval": {"by": "ann"}}


def test_cancelling_a_waiting_child_fails_the_parents_step(worker: Any, client: ApiClient) -> None:
    parent = submit(client, "parent_awaits_signal", {"ticket": "C-2"})
    child = child_of(client, parent)["id"]
    wait_for_run(client, child, until=WAITING)

    client.post(f"/api/runs/{child}/cancel")
    view = client.get(f"/api/runs/{parent}").json()

    assert view["status"] == "failed", view
    assert view["error_code"] == "CHILD_CANCELLED"


def test_a_child_failed_by_its_wait_timeout_fails_the_parents_step(
    worker: Any, client: ApiClient, db: Database
) -> None:
    parent = submit(client, "parent_awaits_signal", {"ticket": "C-4"})
    child = child_of(client, parent)["id"]
    wait_for_run(client, child, until=WAITING)

    wake_due_runs(db, now=db_now(db) + timedelta(hours=2))  # past the child's 1 h timeout
    view = client.get(f"/api/runs/{parent}").json()

    assert client.get(f"/api/runs/{child}").json()["error_code"] == "WAIT_TIMEOUT"
    assert view["status"] == "failed", view
    assert view["error_code"] == "CHILD_FAILED"


def test_a_child_of_an_unknown_workflow_fails_the_parent(worker: Any, client: ApiClient) -> None:
    parent = submit(client, "parent_of_nothing", {"n": 1})

    done = wait_for_run(client, parent)

    assert done["status"] == "failed", done
    assert done["error_code"] == "CHILD_WORKFLOW_INVALID"
    assert done["children"] == []
    assert [(s["name"], s["status"]) for s in done["steps"]] == [
        ("child", "failed"),
        ("report", "skipped"),
    ]


def test_cancelling_the_parent_cancels_its_children_and_grandchildren(
    worker: Any, client: ApiClient
) -> None:
    grandparent = submit(client, "grandparent", {"ticket": "C-3"})
    parent = child_of(client, grandparent)["id"]
    child = child_of(client, parent)["id"]
    wait_for_run(client, child, until=WAITING)

    answer = client.post(f"/api/runs/{grandparent}/cancel")
    statuses = [client.get(f"/api/runs/{r}").json()["status"] for r in (parent, child)]

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    assert statuses == ["cancelled", "cancelled"]


def test_a_cancelled_parents_child_is_cancelled_live_on_the_socket(
    worker: Any, client: ApiClient, user_id: uuid.UUID, connect: Any
) -> None:
    parent = submit(client, "parent_awaits_signal", {"ticket": "C-4"})
    child = child_of(client, parent)["id"]
    wait_for_run(client, child, until=WAITING)
    seen = max(event["seq"] for event in events_of(client, child))
    sock = connect("workflows", user_id)
    sock.send(type="subscribe", topic=f"workflow_run:{child}", since=seen)
    assert sock.recv()["type"] == "subscribed"

    client.post(f"/api/runs/{parent}/cancel")
    live = sock.recv()

    assert live["event"] == "workflow_status_update"
    assert live["data"]["status"] == "cancelled"
    assert live["seq"] == seen + 1


def test_a_detached_child_is_not_cancelled_with_its_parent(
    worker: Any, client: ApiClient, db: Database
) -> None:
    parent = submit(client, "parent_detaches_double", {"n": 1})
    done = wait_for_run(client, parent)
    with db.transaction() as conn:
        # A child still going when its parent is cancelled: detached, it is not the parent's.
        conn.execute(
            "update workflow_runs set status = 'queued', finished_at = null where id = %s",
            (done["children"][0]["id"],),
        )
        conn.execute("update workflow_runs set status = 'waiting' where id = %s", (parent,))

    client.post(f"/api/runs/{parent}/cancel")

    assert client.get(f"/api/runs/{done['children'][0]['id']}").json()["status"] == "queued"


def test_childrens_usage_is_shown_on_the_parent(
    worker: Any, client: ApiClient, db: Database, fake_llm: FakeLlm
) -> None:
    parent = submit(client, "parent_awaits_brief", {"topic": "ducks"})

    done = wait_for_run(client, parent)
    kid = done["children"][0]
    child = client.get(f"/api/runs/{kid['id']}").json()
    tokens = sum(s["usage"]["total_tokens"] for s in child["steps"] if s["usage"])

    assert done["status"] == "completed", done
    assert (kid["calls"], kid["total_tokens"]) == (2, tokens)
    assert kid["cost_micro_usd"] == sum(
        s["usage"]["cost_micro_usd"] for s in child["steps"] if s["usage"]
    )
    assert done["children_usage"]["calls"] == 2
    assert done["children_usage"]["total_tokens"] == tokens
    assert len(usage_rows(db, kid["id"])) == 2
    assert usage_rows(db, parent) == []


def test_a_worker_killed_during_a_child_run_loses_nothing_and_charges_once(
    request: pytest.FixtureRequest,
    settings: Any,
    client: ApiClient,
    db: Database,
    fake_llm: FakeLlm,
    celery_app: Celery,
) -> None:
    """kill -9 while the child holds its worker in step 2 of 3: a second worker finishes the
    child, which resumes the parent once; each model call is charged once."""
    with worker_subprocess(settings, "runs") as first:
        parent = submit(client, "parent_awaits_llm_hold", {"server": fake_llm.url, "key": "c1"})
        assert fake_llm.holding.wait(60), "the child never reached its held step"
        child = child_of(client, parent)["id"]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    wait_until(lambda: fake_llm.abandoned["c1"] == 1, 10, "the held request being dropped")
    request.getfixturevalue("worker")  # a second worker, on every queue
    # Beat's reaper, fired by hand: once the lease expires it hands the run to the new worker.
    view = finish_with_reaper(client, celery_app, parent, LEASE_SECONDS + 30)
    kid = client.get(f"/api/runs/{child}").json()

    assert view["status"] == "completed", view
    assert kid["status"] == "completed", kid
    assert kid["attempts"] == 2
    assert fake_llm.completed == {"first c1": 1, "c1": 1, "last c1": 1}
    assert view["steps"][0]["output"] == kid["output"]
    resumed = [e for e in events_of(client, parent) if e["event"] == "step_resumed"]
    assert len(resumed) == 1
    charged = usage_rows(db, child)
    assert len(charged) == 2
    assert len({row["idempotency_key"] for row in charged}) == 2
    assert len(view["children"]) == 1
