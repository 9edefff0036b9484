"""Calls and ledger reads the seed 000 (Witchcraft) acceptance tests share."""

from __future__ import annotations

import uuid
from typing import Any

from conveyor.db import Database
from tests.support import ApiClient

# The document's test flow: trackAIUsage(userId, 'ollama', 'llama2', 'understand', 100, 50, 0.0,
# 0.0, 1500, null, true), its parameters by name.
DOCUMENTED_USAGE: dict[str, Any] = {
    "provider": "ollama", "model": "llama2", "agentMode": "understand", "promptTokens": 100,
    "completionTokens": 50, "inputCostUsd": 0.0, "outputCostUsd": 0.0, "latencyMs": 1500,
    "sessionId": None, "success": True,
}  # fmt: skip


def ledger(db: Database, user: uuid.UUID) -> dict[str, Any]:
    """The user's usage events and this month's period, as the ledger holds them."""
    with db.connection() as conn:
        events = conn.execute(
            "select id, idempotency_key, prompt_tokens, completion_tokens, input_cost_micro_usd,"
            " output_cost_micro_usd, session_id from usage_events where user_id = %s order by id",
            (user,),
        ).fetchall()
        period = conn.execute(
            "select tokens_used, cost_used_micro_usd, requests_used from usage_periods"
            " where user_id = %s and period_start = conveyor_period_start(now())",
            (user,),
        ).fetchone()
    return {"events": events, "period": period}


def login_audit(db: Database) -> list[tuple[str, str | None, str | None]]:
    """The audited logins: outcome, refusal code and user, oldest first."""
    with db.connection() as conn:
        rows = conn.execute(
            "select outcome, details ->> 'code' as code, actor_user_id::text as actor"
            " from audit_logs where action = 'auth.login' order by id"
        ).fetchall()
    return [(row["outcome"], row["code"], row["actor"]) for row in rows]


def track(client: ApiClient, **changes: Any) -> Any:
    return client.post("/api/ai/track-usage", json={**DOCUMENTED_USAGE, **changes})


def post_raw(client: ApiClient, raw: str) -> Any:
    """Track usage with a body written as JSON text."""
    headers = {"Content-Type": "application/json"}
    return client.post("/api/ai/track-usage", data=raw, headers=headers)


def new_session(client: ApiClient) -> str:
    return str(client.post("/api/agent/session", json={"agentMode": "debug"}).json()["id"])


def assert_error(response: Any, status: int, code: str) -> None:
    """An Express client's error: the status, `{error, code}` (the request named on failure)."""
    body = response.json()
    sent = response.request.body
    assert (response.status_code, body.get("code")) == (status, code), f"{sent!r}: {body}"
    assert isinstance(body["error"], str)
    assert body["error"]
