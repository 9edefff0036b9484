"""Usage, quotas and credits: thin calls to the SQL functions that hold the rules
(sql/20261207000600_ledger.sql). Nothing here does arithmetic on money."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from conveyor.db import Connection, Cursor, Database
from conveyor.errors import (
    ConcurrencyLimited,
    InsufficientCredits,
    QuotaExceeded,
    RateLimited,
)

MAX_TOKENS = 100_000_000  # per event: bigger is a bug in the caller, not a request
MAX_MICRO_USD = 10**12
MAX_CREDITS = 10**12
CLOCK_SKEW = timedelta(minutes=5)  # a reporting backend's clock may run a little ahead


class UsageRecord(BaseModel):
    """One AI request as the ledger records it; the key makes recording it idempotent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str = Field(min_length=1, max_length=255)
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    prompt_tokens: int = Field(ge=0, le=MAX_TOKENS)
    completion_tokens: int = Field(ge=0, le=MAX_TOKENS)
    # Omitted: priced from `model_prices`.
    input_cost_micro_usd: int | None = Field(default=None, ge=0, le=MAX_MICRO_USD)
    output_cost_micro_usd: int | None = Field(default=None, ge=0, le=MAX_MICRO_USD)
    agent_mode: str | None = Field(default=None, max_length=100)
    latency_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    run_id: UUID | None = None
    step_position: int | None = Field(default=None, ge=0)
    session_id: UUID | None = None
    success: bool = True
    error: str | None = Field(default=None, max_length=10_000)
    credits: int = Field(default=0, ge=0, le=MAX_CREDITS)
    # When the request happened (default: now); with a time zone, this month or the last.
    occurred_at: AwareDatetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _recent(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        now = datetime.now(UTC)
        last_month = (now.replace(day=1) - timedelta(days=1)).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        if not last_month <= value <= now + CLOCK_SKEW:
            raise ValueError(
                "must be between the start of last month and now (usage is charged to the month "
                "it happened in; older or future usage cannot be)"
            )
        return value


@dataclass(frozen=True)
class Recorded:
    """What record_usage did: the event, whether it was a repeat, what it charged, and the quota
    threshold (80/100 percent) it crossed first this period, 0 if none."""

    event_id: int
    duplicate: bool
    credits_charged: int
    threshold_crossed: int


def usage_arguments(user_id: UUID, record: UsageRecord) -> dict[str, object]:
    """record as the named parameters of the SQL functions that record usage."""
    return {"user": user_id, **record.model_dump()}


def record_usage(conn: Connection, user_id: UUID, record: UsageRecord) -> Recorded:
    """Record one AI request exactly once, inside the caller's transaction."""
    row = conn.execute(
        """
        select * from record_usage(
          p_user => %(user)s, p_idempotency_key => %(idempotency_key)s,
          p_provider => %(provider)s, p_model => %(model)s,
          p_prompt_tokens => %(prompt_tokens)s, p_completion_tokens => %(completion_tokens)s,
          p_input_cost => %(input_cost_micro_usd)s, p_output_cost => %(output_cost_micro_usd)s,
          p_agent_mode => %(agent_mode)s, p_latency_ms => %(latency_ms)s,
          p_run_id => %(run_id)s, p_step_position => %(step_position)s,
          p_session_id => %(session_id)s, p_success => %(success)s, p_error => %(error)s,
          p_credits => %(credits)s, p_occurred_at => coalesce(%(occurred_at)s, now()))
        """,
        usage_arguments(user_id, record),
    ).fetchone()
    assert row is not None
    return Recorded(
        event_id=row["event_id"],
        duplicate=row["duplicate"],
        credits_charged=row["credits_charged"],
        threshold_crossed=row["threshold_crossed"],
    )


def admit_run(conn: Connection, user_id: UUID, run_id: UUID, job: str) -> int:
    """Check the plan's limits and take the job's credits in the submit's transaction; raise the
    error the client should see when the run may not start. Returns the credits charged."""
    return admission_verdict(start_admission(conn, user_id, run_id, job))


def start_admission(conn: Connection, user_id: UUID, run_id: UUID, job: str) -> Cursor:
    """Send the admission check; read it with admission_verdict (a pipeline may sit between)."""
    return conn.execute("select * from admit_run(%s, %s, %s)", (user_id, run_id, job))


def admission_verdict(cursor: Cursor) -> int:
    """The credits the admitted run was charged, or the refusal the client should see."""
    row = cursor.fetchone()
    assert row is not None
    code = row["code"]
    if code is None:
        return int(row["credits_charged"])
    if code == "RATE_LIMITED":
        raise RateLimited(
            "You reached your plan's daily request limit; it resets at "
            f"{row['resets_at']:%Y-%m-%d %H:%M} UTC.",
            retry_after=row["retry_after"],
        )
    if code == "CONCURRENCY_LIMIT":
        raise ConcurrencyLimited(
            "Too many of your runs are queued or running for your plan; wait for one to finish.",
            retry_after=row["retry_after"],
        )
    if code == "QUOTA_EXCEEDED":
        raise QuotaExceeded(
            f"Your monthly usage quota is used up; it resets on {row['resets_at']:%Y-%m-%d}. "
            "Upgrade your plan to continue sooner.",
            retry_after=row["retry_after"],
        )
    raise InsufficientCredits(
        f"This job costs {row['credits_charged']} credit(s) and your balance is "
        f"{row['credit_balance']}; top up credits to continue.",
        required=row["credits_charged"],
        balance=row["credit_balance"],
    )


def check_and_consume_quota(db: Database, user_id: UUID, tokens: int, cost_micro_usd: int) -> bool:
    """Consume tokens and cost from this month's quota if both fit; False (nothing taken) if not."""
    with db.transaction() as conn:
        row = conn.execute(
            "select check_and_consume_quota(%s, %s, %s) as ok",
            (user_id, tokens, cost_micro_usd),
        ).fetchone()
    assert row is not None
    return bool(row["ok"])


@dataclass(frozen=True)
class CreditMove:
    """The balance after a credit movement, and whether this call applied it."""

    balance: int
    applied: bool


def add_credits(
    db: Database,
    user_id: UUID,
    amount: int,
    *,
    kind: str,
    description: str | None = None,
    reference: str | None = None,
) -> CreditMove:
    """Add credits (once per reference)."""
    with db.transaction() as conn:
        row = conn.execute(
            "select * from add_credits(%s, %s, %s, %s, %s)",
            (user_id, amount, kind, description, reference),
        ).fetchone()
    assert row is not None
    return CreditMove(int(row["balance"]), bool(row["applied"]))


def deduct_credits(
    db: Database,
    user_id: UUID,
    amount: int,
    *,
    kind: str = "usage",
    description: str | None = None,
    reference: str | None = None,
    endpoint: str | None = None,
) -> CreditMove:
    """Take credits if the balance covers them (never below zero; once per reference)."""
    with db.transaction() as conn:
        row = conn.execute(
            "select * from deduct_credits(%s, %s, %s, %s, %s, %s)",
            (user_id, amount, kind, description, reference, endpoint),
        ).fetchone()
    assert row is not None
    return CreditMove(int(row["balance"]), bool(row["applied"]))


def remaining_quota(db: Database, user_id: UUID) -> dict[str, Any]:
    """Limits, use and what remains this month, requests today, runs in flight, credits."""
    with db.transaction() as conn:
        row = conn.execute("select * from get_remaining_quota(%s)", (user_id,)).fetchone()
    assert row is not None
    return dict(row)


def activity_summary(db: Database, user_id: UUID, days: int) -> dict[str, Any]:
    """Totals, by model and by day over the last `days` days."""
    with db.connection() as conn:
        row = conn.execute(
            "select get_user_activity_summary(%s, %s) as summary", (user_id, days)
        ).fetchone()
    assert row is not None
    summary: dict[str, Any] = row["summary"]
    return summary


def reset_period(db: Database, user_id: UUID, period: date) -> bool:
    """Open the user's period for period's month and grant the plan's credits once."""
    with db.transaction() as conn:
        row = conn.execute("select reset_period(%s, %s) as granted", (user_id, period))
        found = row.fetchone()
    assert found is not None
    return bool(found["granted"])
