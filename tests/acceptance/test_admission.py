"""Submitting a run checks the plan's limits and takes the job's credits with the run insert."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor import ledger
from conveyor.db import Database
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, wait_for_run

USES_FAKE_LLM = True


def put_on_plan(db: Database, user: uuid.UUID, **limits: int) -> None:
    """A plan of the user's own: generous everywhere but in `limits`; no credits granted."""
    values = {
        "monthly_token_quota": 10**9,
        "monthly_cost_quota_micro_usd": 10**12,
        "daily_request_limit": 10_000,
        "max_concurrent_runs": 10_000,
        **limits,
    }
    plan = f"p{user.hex[:12]}"
    with db.transaction() as conn:
        conn.execute(
            "insert into plans (id, name, monthly_token_quota, monthly_cost_quota_micro_usd, "
            "daily_request_limit, max_concurrent_runs, monthly_credit_grant) "
            "values (%s, 'test', %s, %s, %s, %s, 0)",
            (
                plan,
                values["monthly_token_quota"],
                values["monthly_cost_quota_micro_usd"],
                values["daily_request_limit"],
                values["max_concurrent_runs"],
            ),
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id, credit_balance) values (%s, %s, 0)",
            (user, plan),
        )


def invoke(client: ApiClient, agent: str = "chat_agent", **headers: str) -> Any:
    return client.post(
        "/api/agents/invoke",
        json={"agent_type": agent, "input": {"message": "hi"}},
        headers=headers or None,
    )


def run_count(db: Database, user: uuid.UUID) -> int:
    with db.connection() as conn:
        row = conn.execute(
            "select count(*) as n from workflow_runs where user_id = %s", (user,)
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_new_user_starts_with_the_free_plans_credits_and_pays_per_job(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    assert invoke(client).status_code == 202
    assert invoke(client, agent="echo").status_code == 202  # echo's rate is 0

    quota = ledger.remaining_quota(db, user_id)
    assert (quota["plan_id"], quota["credit_balance"]) == ("free", 99)


def test_without_credits_for_the_job_the_submit_is_403_and_nothing_is_stored(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id)

    response = invoke(client)

    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "INSUFFICIENT_CREDITS"
    assert "top up" in body["error"]
    assert run_count(db, user_id) == 0


def test_a_repeated_idempotency_key_is_charged_once(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id)
    ledger.add_credits(db, user_id, 5, kind="purchase", reference=f"seed:{user_id}")

    first = invoke(client, **{"Idempotency-Key": "once"})
    again = invoke(client, **{"Idempotency-Key": "once"})

    assert (first.status_code, again.status_code) == (202, 200)
    assert ledger.remaining_quota(db, user_id)["credit_balance"] == 4


def test_past_the_daily_request_limit_the_submit_is_429_with_retry_after(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id, daily_request_limit=2)

    statuses = [invoke(client, agent="echo").status_code for _ in range(2)]
    refused = invoke(client, agent="echo")

    assert statuses == [202, 202]
    assert refused.status_code == 429
    assert refused.json()["code"] == "RATE_LIMITED"
    assert 0 < int(refused.headers["Retry-After"]) <= 24 * 3600
    assert run_count(db, user_id) == 2


def insert_run(db: Database, user: uuid.UUID, days_ago: int = 0) -> None:
    """A finished run inserted the way any path inserts one (not through admission)."""
    with db.transaction() as conn:
        conn.execute(
            "insert into workflow_runs (user_id, kind, workflow_id, status, created_at, "
            "finished_at) values (%s, 'agent', 'echo', 'completed', "
            "now() - make_interval(days => %s), now())",
            (user, days_ago),
        )


def test_runs_of_earlier_days_do_not_count_toward_todays_limit(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id, daily_request_limit=1)
    insert_run(db, user_id, days_ago=1)

    assert invoke(client, agent="echo").status_code == 202
    assert invoke(client, agent="echo").status_code == 429


def test_refused_submits_do_not_count_but_runs_from_any_path_do(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id, daily_request_limit=3)
    insert_run(db, user_id)  # e.g. `conveyor submit`, which does not go through admission

    accepted = [invoke(client, agent="echo").status_code for _ in range(2)]
    refused = [invoke(client, agent="echo").status_code for _ in range(3)]

    assert accepted == [202, 202]
    assert refused == [429, 429, 429]
    assert run_count(db, user_id) == 3


def test_past_the_concurrent_run_limit_the_submit_is_429(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """No worker runs here, so submitted runs stay queued."""
    put_on_plan(db, user_id, max_concurrent_runs=1)

    assert invoke(client, agent="echo").status_code == 202
    refused = invoke(client, agent="echo")

    assert refused.status_code == 429
    assert refused.json()["code"] == "CONCURRENCY_LIMIT"
    assert "Retry-After" in refused.headers


def test_with_the_monthly_quota_used_up_the_submit_is_429_saying_when_it_resets(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    put_on_plan(db, user_id, monthly_token_quota=100)
    assert ledger.check_and_consume_quota(db, user_id, 100, 0)

    refused = invoke(client, agent="echo")

    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "QUOTA_EXCEEDED"
    resets = ledger.remaining_quota(db, user_id)["resets_at"]
    assert f"resets on {resets:%Y-%m-%d}" in body["error"]


def test_a_model_call_is_charged_once_to_the_ledger_even_after_retries(
    request: pytest.FixtureRequest, client: ApiClient, db: Database, user_id: uuid.UUID,
    fake_llm: FakeLlm,
) -> None:  # fmt: skip
    request.getfixturevalue("worker")
    fake_llm.script("hi", 500)

    run_id = invoke(client).json()["request_id"]
    run = wait_for_run(client, run_id)

    assert run["status"] == "completed"
    with db.connection() as conn:
        events = conn.execute(
            "select idempotency_key, prompt_tokens, completion_tokens, "
            "input_cost_micro_usd + output_cost_micro_usd as cost from usage_events "
            "where user_id = %s",
            (user_id,),
        ).fetchall()
    assert events == [
        {
            "idempotency_key": f"run:{run_id}:step:0:attempt:2",
            "prompt_tokens": 1,
            "completion_tokens": 4,
            "cost": run["steps"][0]["usage"]["cost_micro_usd"],
        }
    ]
    assert ledger.remaining_quota(db, user_id)["tokens_used"] == 5
