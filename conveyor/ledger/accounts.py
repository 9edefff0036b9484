"""What users read about their account: quota, usage events, credit balance and transactions.

Money still moves only through `conveyor.ledger.balances` (SQL functions); this module reads, and
validates the amounts clients ask to move. Listings run under RLS (`db.user_transaction`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from conveyor.db import Database
from conveyor.errors import UnknownUser
from conveyor.ledger.balances import MAX_CREDITS
from conveyor.pagination import Listing, user_page
from conveyor.payload import Payload

# The plan a new account opens on (user_accounts.plan_id's default).
NEW_ACCOUNT_PLAN = "free"


class CreditAmount(Payload):
    """`{amount}`: a whole number of credits, 1..10^12; 1.5, "5", true, 0 and negatives are
    refused (strict: no coercion)."""

    amount: int = Field(strict=True, gt=0, le=MAX_CREDITS)


class UsageSummaryQuery(Payload):
    """`GET /api/user/usage-summary` query parameters."""

    days: int = Field(default=30, ge=1, le=366)


class QuotaFigures(BaseModel):
    """One set of quota figures (limits, used or remaining)."""

    tokens: int
    cost_micro_usd: int
    daily_requests: int
    concurrent_runs: int


class QuotaView(BaseModel):
    """`GET /api/user/quota`: the plan's limits, what is used and what remains. Tokens and cost are
    per calendar month (UTC) and reset at `resets_at`; requests per UTC day, reset at
    `daily_resets_at`; concurrent runs are the runs queued or running now."""

    plan_id: str
    period_start: date
    resets_at: datetime
    daily_resets_at: datetime
    limits: QuotaFigures
    used: QuotaFigures
    remaining: QuotaFigures
    credits: int


class UsageEventView(BaseModel):
    """One recorded AI request, as its owner sees it."""

    id: int
    idempotency_key: str
    provider: str
    model: str
    agent_mode: str | None
    prompt_tokens: int
    completion_tokens: int
    input_cost_micro_usd: int
    output_cost_micro_usd: int
    latency_ms: int | None
    run_id: UUID | None
    step_position: int | None
    session_id: UUID | None
    success: bool
    error: str | None
    credits_charged: int
    occurred_at: datetime
    recorded_at: datetime


class CreditTransactionView(BaseModel):
    """One movement of a user's credits: positive adds, negative takes."""

    id: int
    amount: int
    balance_after: int
    kind: str
    description: str | None
    endpoint: str | None
    reference: str | None
    created_at: datetime


class CreditRateView(BaseModel):
    """Credits one request of a job costs (`agent:<type>`, `workflow:<id>` or a `:*` fallback)."""

    endpoint: str
    credits: int
    description: str


class Account(BaseModel):
    """A user's plan and credit balance, and when the account last changed."""

    user_id: UUID
    plan_id: str
    credit_balance: int
    updated_at: datetime


class CreditSummary(BaseModel):
    """`GET /api/credits/transactions/summary`: `total_added - total_used == current_balance`."""

    total_added: int
    total_used: int
    current_balance: int


def quota_view(row: dict[str, Any]) -> QuotaView:
    """The quota view of a `ledger.remaining_quota` row."""
    today = datetime.now(UTC).date()
    return QuotaView(
        plan_id=row["plan_id"],
        period_start=row["period_start"],
        resets_at=row["resets_at"].astimezone(UTC),
        daily_resets_at=datetime.combine(today + timedelta(days=1), time(), UTC),
        limits=QuotaFigures(
            tokens=row["token_quota"],
            cost_micro_usd=row["cost_quota_micro_usd"],
            daily_requests=row["daily_request_limit"],
            concurrent_runs=row["max_concurrent_runs"],
        ),
        used=QuotaFigures(
            tokens=row["tokens_used"],
            cost_micro_usd=row["cost_used_micro_usd"],
            daily_requests=row["requests_today"],
            concurrent_runs=row["runs_in_flight"],
        ),
        remaining=QuotaFigures(
            tokens=row["tokens_remaining"],
            cost_micro_usd=row["cost_remaining_micro_usd"],
            daily_requests=max(row["daily_request_limit"] - row["requests_today"], 0),
            concurrent_runs=max(row["max_concurrent_runs"] - row["runs_in_flight"], 0),
        ),
        credits=row["credit_balance"],
    )


def parse_user_id(raw: str) -> UUID:
    """A user id from a URL; anything that is not a UUID cannot name a user."""
    try:
        return UUID(raw)
    except ValueError:
        raise UnknownUser(f"user {raw!r} does not exist") from None


def require_known_user(db: Database, user_id: UUID) -> None:
    """UnknownUser unless the user has an account here or exists in Supabase Auth: crediting a
    mistyped id must not create an account nobody owns."""
    with db.connection() as conn:
        row = conn.execute(
            "select exists (select 1 from user_accounts where user_id = %(u)s)"
            " or exists (select 1 from auth.users where id = %(u)s) as known",
            {"u": user_id},
        ).fetchone()
    if row is None or not row["known"]:
        raise UnknownUser(f"user {user_id} does not exist")


def account(db: Database, user_id: UUID) -> Account:
    """The user's plan and balance; a user seen for the first time gets an account (free plan,
    with this month's plan credits)."""
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        row = conn.execute(
            "select user_id, plan_id, credit_balance, updated_at from user_accounts "
            "where user_id = %s",
            (user_id,),
        ).fetchone()
    return Account.model_validate(row)


def starting_credits(db: Database) -> int:
    """The credits a new account starts with: this month's grant of the plan accounts open on."""
    with db.connection() as conn:
        row = conn.execute(
            "select monthly_credit_grant from plans where id = %s", (NEW_ACCOUNT_PLAN,)
        ).fetchone()
    return int(row["monthly_credit_grant"]) if row is not None else 0


def credit_summary(db: Database, user_id: UUID) -> CreditSummary:
    """Credits added and used over all time and the balance, read in one statement (one snapshot),
    so `total_added - total_used == current_balance`."""
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        row = conn.execute(
            """
            select coalesce((select sum(amount) from credit_transactions
                              where user_id = a.user_id and amount > 0), 0)::bigint
                     as total_added,
                   coalesce((select -sum(amount) from credit_transactions
                              where user_id = a.user_id and amount < 0), 0)::bigint
                     as total_used,
                   a.credit_balance as current_balance
              from user_accounts a
             where a.user_id = %s
            """,
            (user_id,),
        ).fetchone()
    return CreditSummary.model_validate(row)


USAGE_EVENTS = Listing(
    table="usage_events",
    columns="id, idempotency_key, provider, model, agent_mode, prompt_tokens, "
    "completion_tokens, input_cost_micro_usd, output_cost_micro_usd, latency_ms, run_id, "
    "step_position, session_id, success, error, credits_charged, occurred_at, recorded_at",
    time_column="occurred_at",
    id_type="bigint",
    where="user_id = %(user)s",
)


def list_usage_events(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[UsageEventView], str | None]:
    """A user's usage events under RLS, newest first by (occurred_at, id); no cursor at the end."""
    return user_page(
        db,
        claims,
        USAGE_EVENTS,
        UsageEventView.model_validate,
        params={"user": user_id},
        limit=limit,
        cursor=cursor,
    )


CREDIT_TRANSACTIONS = Listing(
    table="credit_transactions",
    columns="id, amount, balance_after, kind, description, endpoint, reference, created_at",
    time_column="created_at",
    id_type="bigint",
    where="user_id = %(user)s",
)


def list_credit_transactions(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[CreditTransactionView], str | None]:
    """A user's credit movements under RLS, newest first by (created_at, id)."""
    return user_page(
        db,
        claims,
        CREDIT_TRANSACTIONS,
        CreditTransactionView.model_validate,
        params={"user": user_id},
        limit=limit,
        cursor=cursor,
    )


def credit_rates(db: Database, claims: dict[str, Any]) -> list[CreditRateView]:
    """Every credit rate, by endpoint (readable by any signed-in user under RLS)."""
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            'select endpoint, credits, description from credit_rates order by endpoint collate "C"'
        ).fetchall()
    return [CreditRateView.model_validate(row) for row in rows]
