"""The reservation overspend attack (issue 24): many concurrent runs with a model call, on
several worker processes, against a balance that covers a few worst cases. Not one credit over:
every call the provider answered was paid for, holds all go, the runs that could not reserve
wait for credits uncharged."""

from __future__ import annotations

import time
import uuid

from celery import Celery

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.credit_workflows import (
    CREDIT_ENV,
    CREDIT_SETTINGS,
    call_credits_worst,
    set_balance,
)
from tests.fake_llm import FakeLlm
from tests.support import new_run, wait_until, worker_subprocess

USES_FAKE_LLM = True
SETTINGS = {**CREDIT_SETTINGS, "cancel_check_seconds": 0.1}
RUNS = 24
CALL_CREDITS = 7  # the fake answers "call kNN" with 2 prompt and 5 completion tokens


def statuses(db: Database, run_ids: list[uuid.UUID]) -> dict[str, int]:
    with db.single_statement() as conn:
        rows = conn.execute(
            "select status, count(*) as n from workflow_runs where id = any(%s) group by status",
            (run_ids,),
        ).fetchall()
    return {row["status"]: row["n"] for row in rows}


def test_concurrent_runs_on_three_workers_never_spend_more_credits_than_the_balance(
    db: Database, settings: Settings, fake_llm: FakeLlm, celery_app: Celery
) -> None:
    user = uuid.uuid4()
    worst = call_credits_worst(settings, "call k00")
    start = 3 * worst  # a few worst cases; each real call costs far less
    set_balance(db, user, start)
    run_ids = [
        new_run(db, "credit_call", {"key": f"k{n:02}"}, user_id=user).id for n in range(RUNS)
    ]

    with (
        worker_subprocess(settings, "runs", **CREDIT_ENV),
        worker_subprocess(settings, "runs", **CREDIT_ENV),
        worker_subprocess(settings, "runs", **CREDIT_ENV),
    ):
        time.sleep(1)  # let the workers connect, so the runs race rather than queue behind one
        for run_id in run_ids:
            celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run_id)])
        wait_until(
            lambda: (
                statuses(db, run_ids).get("completed", 0) + statuses(db, run_ids).get("waiting", 0)
                == RUNS
            ),
            90,
            "every run completed or waiting for credits",
        )

    with db.single_statement() as conn:
        acct = conn.execute(
            "select a.credit_balance, a.reserved_credits, p.reserved_tokens, "
            "p.reserved_cost_micro_usd from user_accounts a join usage_periods p using (user_id) "
            "where a.user_id = %s",
            (user,),
        ).fetchone()
        charged = conn.execute(
            "select coalesce(sum(credits_charged), 0) as c, count(*) as n, "
            "count(distinct run_id) as runs from usage_events where user_id = %s",
            (user,),
        ).fetchone()
        waiting = conn.execute(
            "select r.id, s.wait ->> 'kind' as kind from workflow_runs r join workflow_steps s "
            "on s.run_id = r.id where r.id = any(%s) and r.status = 'waiting'",
            (run_ids,),
        ).fetchall()
        holds = conn.execute("select count(*) as n from credit_reservations").fetchone()
    assert acct is not None
    assert charged is not None
    assert holds is not None
    answered = fake_llm.completed.total()
    done = statuses(db, run_ids).get("completed", 0)
    assert answered * CALL_CREDITS <= start
    assert answered == done == charged["n"] == charged["runs"]
    assert charged["c"] == answered * CALL_CREDITS
    assert acct["credit_balance"] == start - charged["c"] >= 0
    assert (acct["reserved_credits"], acct["reserved_tokens"], acct["reserved_cost_micro_usd"]) == (
        0,
        0,
        0,
    )
    assert holds["n"] == 0
    assert waiting, "the balance covers only some of the runs"
    assert {row["kind"] for row in waiting} == {"credits"}
    assert len(waiting) + done == RUNS
