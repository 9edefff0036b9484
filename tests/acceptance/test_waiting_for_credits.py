"""A run waiting for credits (issue 24) resumes when a signed Stripe top-up arrives and
completes, charged once; the user is told it waits."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.credit_workflows import CREDIT_SETTINGS, set_balance
from tests.acceptance.stripe_deliveries import deliver, wait_processed
from tests.fake_llm import FakeLlm
from tests.fake_stripe import credit_pack_session, event
from tests.support import LiveServer, new_run, wait_until

USES_FAKE_LLM = True
SETTINGS = {**stripe_deliveries.SETTINGS, **CREDIT_SETTINGS, "cancel_check_seconds": 0.1}
PROMPT = "call one"  # 7 credits when answered


def run_row(db: Database, run_id: uuid.UUID) -> dict[str, Any]:
    with db.single_statement() as conn:
        row = conn.execute("select * from workflow_runs where id = %s", (run_id,)).fetchone()
    assert row is not None
    return dict(row)


def park_for_credits(db: Database, celery_app: Celery, user: uuid.UUID) -> uuid.UUID:
    set_balance(db, user, 10)
    run = new_run(db, "credit_call", {"key": "one"}, user_id=user)
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    wait_until(lambda: run_row(db, run.id)["status"] == "waiting", 20, "the run waiting")
    return run.id


@pytest.mark.usefixtures("worker")
def test_a_run_waiting_for_credits_completes_after_a_signed_stripe_top_up_charged_once(
    live_server: LiveServer, db: Database, celery_app: Celery, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    run_id = park_for_credits(db, celery_app, user)
    assert fake_llm.received[PROMPT] == 0
    document = event("checkout.session.completed", credit_pack_session(user, credits=300))

    assert deliver(live_server, document).status_code == 200
    assert wait_processed(db, document["id"])["status"] == "processed"

    wait_until(lambda: run_row(db, run_id)["status"] == "completed", 20, "the run completing")
    assert fake_llm.completed[PROMPT] == 1
    with db.single_statement() as conn:
        charged = conn.execute(
            "select count(*) as n, sum(credits_charged) as c from usage_events where run_id = %s",
            (run_id,),
        ).fetchone()
        balance = conn.execute(
            "select credit_balance, reserved_credits from user_accounts where user_id = %s",
            (user,),
        ).fetchone()
    assert charged is not None
    assert balance is not None
    assert (charged["n"], charged["c"]) == (1, 7)
    assert (balance["credit_balance"], balance["reserved_credits"]) == (10 + 300 - 7, 0)


@pytest.mark.usefixtures("worker")
def test_a_run_waiting_for_credits_notifies_its_user_and_says_so_in_its_status_event(
    db: Database, celery_app: Celery, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    run_id = park_for_credits(db, celery_app, user)

    with db.single_statement() as conn:
        notes = conn.execute(
            "select notification_type, metadata from notifications where user_id = %s",
            (user,),
        ).fetchall()
        status = conn.execute(
            "select data from run_events where run_id = %s and event = 'workflow_status_update' "
            "order by seq desc limit 1",
            (run_id,),
        ).fetchone()
    assert [n["notification_type"] for n in notes] == ["waiting_for_credits"]
    assert notes[0]["metadata"]["run_id"] == str(run_id)
    assert status is not None
    assert status["data"]["status"] == "waiting"
    assert status["data"]["waiting_for"] == "credits"
