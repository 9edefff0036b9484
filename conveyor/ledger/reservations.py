"""Credit reservations: a model call's worst case held against the user's credits and quota
before it is made, settled at its real cost in the step's checkpoint, released when the attempt
fails or the run ends. The rules are SQL (sql/20261207002900_credit_reservations.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from conveyor.db import Connection, Database
from conveyor.steps.base import CallEstimate


@dataclass(frozen=True)
class HoldKey:
    """Which attempt a hold is for: the run's claim, the step, the map item, the attempt."""

    run_id: UUID
    run_attempt: int
    position: int
    item: int | None
    attempt: int


@dataclass(frozen=True)
class Verdict:
    """A reservation's answer: held, or refused with the credits needed and available."""

    reserved: bool
    code: str | None
    credits: int
    available: int


@dataclass(frozen=True)
class HeldReservation:
    """One hold, for the dashboard."""

    user_id: UUID
    run_id: UUID
    position: int
    item: int | None
    credits: int
    tokens: int
    age_seconds: float
    created_at: datetime


def reserve(
    db: Database, user_id: UUID, key: HoldKey, estimate: CallEstimate, credits_per_usd: int
) -> Verdict:
    """Hold the estimate's worst case in its own transaction (committed before the call)."""
    with db.transaction() as conn:
        row = conn.execute(
            "select * from reserve_credits(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                user_id,
                key.run_id,
                key.run_attempt,
                key.position,
                key.item,
                key.attempt,
                estimate.model,
                estimate.prompt_tokens,
                estimate.completion_tokens,
                estimate.cost_micro_usd,
                credits_per_usd,
            ),
        ).fetchone()
    assert row is not None
    return Verdict(row["reserved"], row["code"], row["credits"], row["available"])


def release_step(
    conn: Connection, run_id: UUID, position: int, item: int | None = None
) -> tuple[int, str | None]:
    """Release one step's (or map item's) holds in the caller's transaction: the rate (credits
    per USD) and model they were priced at, (0, None) when there were none."""
    row = conn.execute(
        "select rate, model from release_reservations(%s, %s, %s)", (run_id, position, item)
    ).fetchone()
    assert row is not None
    return int(row["rate"]), row["model"]


def release_attempt(db: Database, key: HoldKey) -> None:
    """A failed, retried or deferred attempt gives its own hold back at once (not a hold a later
    claim of the run made for the same step)."""
    with db.transaction() as conn:
        conn.execute(
            "select * from release_reservations(%s, %s, %s, %s, %s)",
            (key.run_id, key.position, key.item, key.run_attempt, key.attempt),
        )


def release_run(conn: Connection, run_id: UUID) -> None:
    """Release every hold of a run that ended (in its final transaction)."""
    conn.execute("select * from release_reservations(%s)", (run_id,))


def call_credits(
    conn: Connection,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_micro_usd: int | None,
    credits_per_usd: int,
) -> int:
    """Credits a call's real cost comes to (an unpriced model is priced from model_prices)."""
    if credits_per_usd == 0:
        return 0
    row = conn.execute(
        "select conveyor_cost_credits(coalesce(%s, conveyor_call_cost(%s, %s, %s)), %s) as c",
        (cost_micro_usd, model, prompt_tokens, completion_tokens, credits_per_usd),
    ).fetchone()
    assert row is not None
    return int(row["c"])


def release_stale(db: Database, limit: int = 1000) -> int:
    """Maintenance: release holds of runs that ended, wait, or were claimed again."""
    with db.transaction() as conn:
        row = conn.execute("select release_stale_reservations(%s) as n", (limit,)).fetchone()
    assert row is not None
    return int(row["n"])


def reservations_held(db: Database, limit: int = 100) -> list[HeldReservation]:
    """The oldest holds first, for the dashboard."""
    with db.single_statement() as conn:
        rows = conn.execute(
            """
            select user_id, run_id, position, nullif(item, -1) as item, credits, tokens,
                   extract(epoch from now() - created_at)::float8 as age, created_at
              from credit_reservations order by created_at limit %s
            """,
            (limit,),
        ).fetchall()
    return [
        HeldReservation(
            r["user_id"],
            r["run_id"],
            r["position"],
            r["item"],
            r["credits"],
            r["tokens"],
            r["age"],
            r["created_at"],
        )
        for r in rows
    ]
