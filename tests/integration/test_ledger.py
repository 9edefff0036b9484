"""The ledger's SQL rules under concurrency: no overspend, no double charge, exact balances."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

from conveyor import ledger
from conveyor.db import Database, sql_connection
from conveyor.ledger.balances import UsageRecord

THREADS = 8
CALLS_PER_THREAD = 500


def give_plan(db: Database, user: uuid.UUID, *, tokens: int, credits_grant: int = 0) -> None:
    """Put user on a plan of its own with `tokens` a month and no credits but those granted."""
    with db.transaction() as conn:
        conn.execute(
            "insert into plans values (%s, 'test', %s, %s, 100000, 100000, %s)",
            (f"p{user.hex[:12]}", tokens, 10**12, credits_grant),
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id) values (%s, %s)",
            (user, f"p{user.hex[:12]}"),
        )


def hammer(database_url: str, statement: str, args: tuple[object, ...]) -> list[bool]:
    """Run statement THREADS x CALLS_PER_THREAD times from THREADS connections at once."""

    def one_thread(_: int) -> list[bool]:
        with sql_connection(database_url, autocommit=True) as conn:
            return [
                bool(conn.execute(statement, args).fetchone()[0]) for _ in range(CALLS_PER_THREAD)
            ]  # type: ignore[index]

    with ThreadPoolExecutor(THREADS) as pool:
        return [ok for batch in pool.map(one_thread, range(THREADS)) for ok in batch]


def test_concurrent_quota_consumers_never_exceed_the_limit(db: Database, database_url: str) -> None:
    """8 threads x 500 consumes of 1 token against a 1,000-token quota: exactly 1,000 succeed."""
    user = uuid.uuid4()
    give_plan(db, user, tokens=1000)

    results = hammer(database_url, "select check_and_consume_quota(%s, 1, 0)", (user,))

    assert results.count(True) == 1000
    assert results.count(False) == THREADS * CALLS_PER_THREAD - 1000
    assert ledger.remaining_quota(db, user)["tokens_used"] == 1000


def test_concurrent_deductions_leave_an_exact_balance_and_never_go_below_zero(
    db: Database, database_url: str
) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10)
    ledger.add_credits(db, user, 1000, kind="purchase", reference=f"seed:{user}")

    results = hammer(database_url, "select applied from deduct_credits(%s, 1)", (user,))

    assert results.count(True) == 1000
    with db.connection() as conn:
        balance = conn.execute(
            "select credit_balance from user_accounts where user_id = %s", (user,)
        ).fetchone()
        moves = conn.execute(
            "select sum(amount) as total, min(balance_after) as lowest, count(*) as n "
            "from credit_transactions where user_id = %s",
            (user,),
        ).fetchone()
    assert balance == {"credit_balance": 0}
    assert moves == {"total": 0, "lowest": 0, "n": 1001}


def test_every_usage_event_is_charged_once_however_often_and_in_whatever_order_it_comes(
    db: Database,
) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10**9)
    ledger.add_credits(db, user, 10_000, kind="purchase", reference=f"seed:{user}")
    events = [
        UsageRecord(
            idempotency_key=f"req-{i}",
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=random.randint(0, 5000),
            completion_tokens=random.randint(0, 5000),
            input_cost_micro_usd=random.randint(0, 900),
            output_cost_micro_usd=random.randint(0, 900),
            credits=random.randint(0, 3),
        )
        for i in range(200)
    ]
    deliveries = events * 2
    random.shuffle(deliveries)

    def deliver(event: UsageRecord) -> bool:
        with db.transaction() as conn:
            return ledger.record_usage(conn, user, event).duplicate

    with ThreadPoolExecutor(4) as pool:
        duplicates = list(pool.map(deliver, deliveries))

    assert duplicates.count(True) == len(events)
    quota = ledger.remaining_quota(db, user)
    assert quota["tokens_used"] == sum(e.prompt_tokens + e.completion_tokens for e in events)
    assert quota["cost_used_micro_usd"] == sum(
        (e.input_cost_micro_usd or 0) + (e.output_cost_micro_usd or 0) for e in events
    )
    assert quota["credit_balance"] == 10_000 - sum(e.credits for e in events)


def test_a_missing_cost_is_priced_from_the_model_price_table(db: Database) -> None:
    user = uuid.uuid4()
    record = UsageRecord(
        idempotency_key="priced",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=1000,
        completion_tokens=100,
    )

    with db.transaction() as conn:
        ledger.record_usage(conn, user, record)

    # gpt-4o: 2.50 $ per million prompt tokens, 10 $ per million completion tokens.
    assert ledger.remaining_quota(db, user)["cost_used_micro_usd"] == 2500 + 1000


def test_usage_credits_stop_at_zero_and_record_what_was_taken(db: Database) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10**9)
    ledger.add_credits(db, user, 2, kind="purchase", reference=f"seed:{user}")

    with db.transaction() as conn:
        recorded = ledger.record_usage(
            conn,
            user,
            UsageRecord(
                idempotency_key="big",
                provider="x",
                model="m",
                prompt_tokens=1,
                completion_tokens=1,
                credits=5,
            ),
        )

    assert recorded.credits_charged == 2
    assert ledger.remaining_quota(db, user)["credit_balance"] == 0


def test_crossing_80_and_100_percent_is_reported_once_per_period(db: Database) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=100)

    def use(key: str, tokens: int) -> int:
        with db.transaction() as conn:
            record = UsageRecord(
                idempotency_key=key,
                provider="x",
                model="m",
                prompt_tokens=tokens,
                completion_tokens=0,
                input_cost_micro_usd=0,
                output_cost_micro_usd=0,
            )
            return ledger.record_usage(conn, user, record).threshold_crossed

    assert [use("a", 50), use("b", 35), use("c", 5), use("d", 20), use("e", 20)] == [
        0,
        80,
        0,
        100,
        0,
    ]


def test_the_monthly_reset_grants_plan_credits_once_per_period(db: Database) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10, credits_grant=50)
    next_month = (date.today().replace(day=1) + timedelta(days=32)).replace(day=1)

    assert ledger.reset_period(db, user, next_month) is True
    assert ledger.reset_period(db, user, next_month) is False
    with db.connection() as conn:
        grants = conn.execute(
            "select count(*) as n from credit_transactions where user_id = %s and kind = 'grant'",
            (user,),
        ).fetchone()
    assert grants == {"n": 1}


def test_a_users_first_activity_in_a_month_grants_that_months_credits(db: Database) -> None:
    """Credits renew with the period even if the scheduled reset did not run."""
    user = uuid.uuid4()
    give_plan(db, user, tokens=10, credits_grant=50)

    assert ledger.remaining_quota(db, user)["credit_balance"] == 50
    assert ledger.remaining_quota(db, user)["credit_balance"] == 50
