"""The workflow and settings the credit reservation tests share (a worker in another process
imports this module through CONVEYOR_WORKFLOW_MODULES)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from conveyor import steps, workflows
from conveyor.db import Database
from conveyor.setting_values import ModelPrice
from conveyor.settings import Settings
from conveyor.steps import StepContext, StepDeferred
from conveyor.steps.llm import call_estimate
from conveyor.workflows import StepSpec, Workflow

MODEL = "credit-test-model"
MAX_TOKENS = 20
# One credit per token: a micro-USD a token, a credit a micro-USD.
PRICES = {MODEL: ModelPrice(input_per_million=1_000_000, output_per_million=1_000_000)}
CREDIT_SETTINGS: dict[str, Any] = {
    "llm_prices": PRICES,
    "llm_credits_per_usd": 1_000_000,
    "credit_wait_seconds": 3600.0,
}
CREDIT_ENV = {
    "LLM_PRICES": json.dumps({m: p.model_dump() for m, p in PRICES.items()}),
    "LLM_CREDITS_PER_USD": "1000000",
    "CREDIT_WAIT_SECONDS": "3600",
    "CONVEYOR_WORKFLOW_MODULES": "tests.acceptance.credit_workflows",
}


class KeyInput(BaseModel):
    key: str


workflows.define(
    Workflow(
        name="credit_call",
        description="One model call, its worst case held against the user's credits.",
        input_model=KeyInput,
        steps=[
            StepSpec(
                name="call",
                kind="llm",
                config={
                    "prompt": "call {{ inputs.key }}",
                    "model": MODEL,
                    "max_tokens": MAX_TOKENS,
                },
            )
        ],
    )
)


# Runs whose rate-limited step was deferred once already (this process only: in-process tests).
DEFERRED_ONCE: set[str] = set()


@steps.function("tests.rate_limited_once")
def rate_limited_once(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Deferred for its rate limit the first time it runs in a run, then done."""
    if str(ctx.run_id) not in DEFERRED_ONCE:
        DEFERRED_ONCE.add(str(ctx.run_id))
        raise StepDeferred(
            "rate_limit", until=datetime.now(UTC) + timedelta(seconds=60), detail={"key": "test"}
        )
    return {"ran": True}


workflows.define(
    Workflow(
        name="rate_limited_once",
        description="A step its rate limit defers once.",
        input_model=KeyInput,
        steps=[
            StepSpec(name="limited", kind="python", config={"function": "tests.rate_limited_once"})
        ],
    )
)

workflows.define(
    Workflow(
        name="credit_map",
        description="A model call per item, each item's worst case held.",
        input_model=KeyInput,
        steps=[
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": ["a", "b"],
                    "step": {
                        "kind": "llm",
                        "config": {
                            "prompt": "call {{ item }}",
                            "model": MODEL,
                            "max_tokens": MAX_TOKENS,
                        },
                    },
                },
            )
        ],
    )
)


def call_credits_worst(settings: Settings, prompt: str) -> int:
    """The credits a reservation holds for one call of credit_call with this prompt."""
    estimate = call_estimate(settings, MODEL, [{"role": "user", "content": prompt}], MAX_TOKENS)
    assert estimate.cost_micro_usd is not None
    return estimate.cost_micro_usd


def set_balance(db: Database, user: uuid.UUID, credits: int) -> None:
    """The user's account with exactly credits (the plan's grant set aside)."""
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user,))
        conn.execute("select conveyor_ensure_period(%s, conveyor_period_start(now()))", (user,))
        conn.execute(
            "update user_accounts set credit_balance = %s where user_id = %s", (credits, user)
        )
