"""Credit reservations against real Postgres, Redis and the fake model provider, the engine
called in this process: a model call's worst case is held before it, the real cost charged
after, a refusal parks the run waiting for credits (docs/architecture.md, "Waiting for
credits")."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.ledger import reservations
from conveyor.ops import flow, maintenance
from conveyor.runs import credit_waits, views, waits
from conveyor.runs.execution import Result, execute_run
from conveyor.settings import Settings
from conveyor.steps.base import CallEstimate
from tests.acceptance.credit_workflows import (
    CREDIT_SETTINGS,
    MODEL,
    call_credits_worst,
    set_balance,
)
from tests.acceptance.durable_waits_calls import db_now
from tests.fake_llm import FakeLlm
from tests.support import new_run, wait_until

USES_FAKE_LLM = True
SETTINGS = {**CREDIT_SETTINGS, "cancel_check_seconds": 0.1}
PROMPT = "call one"  # the fake answers 2 prompt and 5 completion tokens: 7 credits


def execute(db: Database, settings: Settings, run_id: uuid.UUID) -> Result:
    publisher = EventPublisher(str(settings.redis_url))
    try:
        return execute_run(db, publisher, settings, run_id)
    finally:
        publisher.close()


def parked_run(db: Database, settings: Settings, user: uuid.UUID) -> uuid.UUID:
    """A credit_call run of a user with 10 credits (less than its call's worst case), executed
    once: it waits for credits."""
    set_balance(db, user, 10)
    run_id = new_run(db, "credit_call", {"key": "one"}, user_id=user).id
    assert execute(db, settings, run_id) is Result.WAITING
    return run_id


def account(db: Database, user: uuid.UUID) -> dict[str, Any]:
    with db.single_statement() as conn:
        row = conn.execute(
            "select a.credit_balance, a.reserved_credits, p.reserved_tokens "
            "from user_accounts a join usage_periods p on p.user_id = a.user_id "
            "where a.user_id = %s",
            (user,),
        ).fetchone()
    assert row is not None
    return dict(row)


def step_of(db: Database, run_id: uuid.UUID) -> dict[str, Any]:
    with db.single_statement() as conn:
        row = conn.execute(
            "select s.status, s.attempt, s.wait, r.status as run_status, r.error_code "
            "from workflow_steps s join workflow_runs r on r.id = s.run_id "
            "where s.run_id = %s and s.position = 0",
            (run_id,),
        ).fetchone()
    assert row is not None
    return dict(row)


def test_a_settled_step_charges_its_real_cost_not_its_worst_case(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, 1000)
    run = new_run(db, "credit_call", {"key": "one"}, user_id=user)

    assert execute(db, settings, run.id) is Result.COMPLETED

    assert fake_llm.completed[PROMPT] == 1
    assert account(db, user) == {"credit_balance": 993, "reserved_credits": 0, "reserved_tokens": 0}
    assert call_credits_worst(settings, PROMPT) > 7


def test_a_refused_reservation_parks_the_run_waiting_for_credits_uncharged(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, call_credits_worst(settings, PROMPT) - 1)
    run = new_run(db, "credit_call", {"key": "one"}, user_id=user)

    assert execute(db, settings, run.id) is Result.WAITING

    step = step_of(db, run.id)
    assert step["run_status"] == "waiting"
    assert step["status"] == "waiting"
    assert step["attempt"] == 0  # given back
    assert step["wait"]["kind"] == "credits"
    assert step["wait"]["needed"] == call_credits_worst(settings, PROMPT)
    claims = {"sub": str(user), "role": "authenticated", "email": None, "app_metadata": {}}
    assert views.get_run(db, claims, run.id).waiting_for == "credits"
    assert fake_llm.received[PROMPT] == 0
    assert account(db, user)["reserved_credits"] == 0
    assert flow.runs_waiting(db) == {"credits": 1}


def test_credits_arriving_resume_a_run_waiting_for_credits_which_completes_charged_once(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    run_id = parked_run(db, settings, user)
    with db.transaction() as conn:
        conn.execute("select * from add_credits(%s, 1000, 'purchase')", (user,))

    resumed = credit_waits.resume_credit_waiters(db, user)
    again = credit_waits.resume_credit_waiters(db, user)

    assert [r.run_id for r in resumed] == [run_id]
    assert again == []
    assert step_of(db, run_id)["status"] == "pending"
    assert execute(db, settings, run_id) is Result.COMPLETED
    assert step_of(db, run_id)["attempt"] == 1
    assert fake_llm.completed[PROMPT] == 1
    assert account(db, user)["credit_balance"] == 1010 - 7


def test_the_monthly_grant_resumes_a_run_waiting_for_credits(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    run_id = parked_run(db, settings, user)
    handed: list[uuid.UUID] = []

    counts = maintenance.monthly_quota_reset(
        db, settings, "2098-07", on_resumed=lambda runs: handed.extend(r.run_id for r in runs)
    )

    assert handed == [run_id]
    assert counts["credit_waits_resumed"] >= 1
    assert execute(db, settings, run_id) is Result.COMPLETED


def test_the_safety_net_resumes_runs_whose_credits_arrived_by_a_path_that_does_not_resume(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    covered, short = uuid.uuid4(), uuid.uuid4()
    runs = {}
    for user in (covered, short):
        runs[user] = parked_run(db, settings, user)
    set_balance(db, covered, 1000)

    resumed = credit_waits.resume_covered(db)

    assert [run.run_id for run in resumed] == [runs[covered]]
    assert step_of(db, runs[short])["status"] == "waiting"


def test_a_run_still_waiting_for_credits_when_its_wait_ends_fails_insufficient_credits(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    run_id = parked_run(db, settings, user)
    now = db_now(db)

    early = waits.wake_due_runs(db, now=now + timedelta(seconds=CREDIT_WAIT - 60))
    ended = waits.wake_due_runs(db, now=now + timedelta(seconds=CREDIT_WAIT + 60))

    assert early == []
    assert [(r.run_id, r.status) for r in ended] == [(run_id, "failed")]
    step = step_of(db, run_id)
    assert step["error_code"] == "INSUFFICIENT_CREDITS"
    assert account(db, user)["credit_balance"] == 10


def test_a_failed_step_releases_its_hold(
    db: Database, settings: Settings, fake_llm: FakeLlm
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, 1000)
    fake_llm.script(PROMPT, 400)
    run = new_run(db, "credit_call", {"key": "one"}, user_id=user)

    assert execute(db, settings, run.id) is Result.FAILED

    assert fake_llm.received[PROMPT] == 1  # the hold was made: the call went out
    assert account(db, user) == {
        "credit_balance": 1000,
        "reserved_credits": 0,
        "reserved_tokens": 0,
    }


CREDIT_WAIT = float(CREDIT_SETTINGS["credit_wait_seconds"])


def test_concurrent_reservations_never_promise_more_than_the_balance(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, 100)
    estimate = CallEstimate("openai", MODEL, 20, 10, 30)  # 30 credits each
    verdicts: list[reservations.Verdict] = []
    lock = threading.Lock()

    def reserve(n: int) -> None:
        key = reservations.HoldKey(uuid.uuid4(), 1, 0, None, 1)
        verdict = reservations.reserve(db, user, key, estimate, 1_000_000)
        with lock:
            verdicts.append(verdict)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(verdicts) == 12
    assert sum(v.reserved for v in verdicts) == 3
    assert account(db, user)["reserved_credits"] == 90
    held = reservations.reservations_held(db)
    assert sorted(h.credits for h in held) == [30, 30, 30]
    # Their runs do not exist: the sweep releases them all.
    assert reservations.release_stale(db) == 3
    assert account(db, user)["reserved_credits"] == 0


def test_an_earlier_claims_failed_attempt_releases_only_its_own_hold(db: Database) -> None:
    user, run_id = uuid.uuid4(), uuid.uuid4()
    set_balance(db, user, 100)
    estimate = CallEstimate("openai", MODEL, 20, 10, 30)
    stale, live = (reservations.HoldKey(run_id, claim, 0, None, 1) for claim in (1, 2))
    assert reservations.reserve(db, user, stale, estimate, 1_000_000).reserved
    assert reservations.reserve(db, user, live, estimate, 1_000_000).reserved

    reservations.release_attempt(db, stale)

    assert [h.credits for h in reservations.reservations_held(db) if h.run_id == run_id] == [30]
    assert account(db, user)["reserved_credits"] == 30


def test_credits_held_for_a_model_call_cannot_pay_an_admission_or_an_endpoint(
    db: Database,
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, 31)
    held = reservations.HoldKey(uuid.uuid4(), 1, 0, None, 1)
    estimate = CallEstimate("openai", MODEL, 20, 10, 30)
    assert reservations.reserve(db, user, held, estimate, 1_000_000).reserved

    with db.transaction() as conn:
        admission = conn.execute(
            "select * from admit_run(%s, %s, 'workflow:anything')", (user, uuid.uuid4())
        ).fetchone()
        deducted = conn.execute("select * from deduct_credits(%s, 2)", (user,)).fetchone()

    assert admission is not None
    assert (admission["code"], admission["credit_balance"]) == ("INSUFFICIENT_CREDITS", 1)
    assert deducted is not None
    assert (deducted["balance"], deducted["applied"]) == (31, False)


def test_a_rate_limited_step_parks_its_run_and_runs_again_when_its_time_comes(
    db: Database, settings: Settings
) -> None:
    run = new_run(db, "rate_limited_once", {"key": "one"})
    assert execute(db, settings, run.id) is Result.WAITING
    parked = step_of(db, run.id)
    now = db_now(db)

    early = waits.wake_due_runs(db, now=now + timedelta(seconds=30))
    woken = waits.wake_due_runs(db, now=now + timedelta(seconds=90))

    assert (parked["status"], parked["attempt"], parked["wait"]["kind"]) == (
        "waiting",
        0,
        "rate_limit",
    )
    assert early == []
    assert [(r.run_id, r.status) for r in woken] == [(run.id, "queued")]
    assert step_of(db, run.id)["status"] == "pending"
    assert execute(db, settings, run.id) is Result.COMPLETED
    assert step_of(db, run.id)["attempt"] == 1


@pytest.mark.usefixtures("worker")
def test_a_map_item_whose_credits_are_refused_fails_insufficient_credits(
    db: Database, settings: Settings, fake_llm: FakeLlm, celery_app: Celery
) -> None:
    user = uuid.uuid4()
    set_balance(db, user, call_credits_worst(settings, "call a") + 3)
    run = new_run(db, "credit_map", {"key": "one"}, user_id=user)

    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    wait_until(lambda: step_of(db, run.id)["run_status"] == "failed", 30, "the run failing")

    with db.single_statement() as conn:
        items = conn.execute(
            "select status, error_code from run_work_items where run_id = %s order by item",
            (run.id,),
        ).fetchall()
    assert ("failed", "INSUFFICIENT_CREDITS") in [(i["status"], i["error_code"]) for i in items]
    assert fake_llm.completed.total() <= 1
    assert account(db, user)["reserved_credits"] == 0
