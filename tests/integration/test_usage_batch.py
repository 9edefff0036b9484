"""record_usage_batch: a batch of events recorded exactly once, in one transaction, with totals
that match an independent sum however the events are repeated, ordered or raced."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import ledger
from conveyor.db import Database, sql_connection
from conveyor.ledger.ingest import BatchResult, UsageEventIn, record_batch

# model_prices as the migration seeds them: micro-USD per million prompt / completion tokens.
PRICES = {"gpt-4o-mini": (150_000, 600_000), "gpt-4o": (2_500_000, 10_000_000)}
FREE_PLAN_CREDITS = 100
THREADS = 6


def this_month_start() -> datetime:
    """Midnight UTC on the first day of this month."""
    return datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def give_plan(db: Database, user: uuid.UUID, *, tokens: int, credits: int) -> None:
    """Put user on a plan of its own with `tokens` a month and `credits` bought."""
    with db.transaction() as conn:
        conn.execute(
            "insert into plans values (%s, 'test', %s, %s, 100000, 100000, 0)",
            (f"p{user.hex[:12]}", tokens, 10**12),
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id) values (%s, %s)",
            (user, f"p{user.hex[:12]}"),
        )
    if credits:
        ledger.add_credits(db, user, credits, kind="purchase", reference=f"seed:{user}")


def random_events(
    users: Sequence[uuid.UUID], count: int, *, max_credits: int
) -> list[UsageEventIn]:
    """Events spread over users, half priced by the caller and half left to model_prices, some
    last month."""
    now = datetime.now(UTC)
    # Usage may be reported for last month too: some events land in the previous period.
    last_month = (this_month_start() - timedelta(days=1)).replace(day=1)
    events = []
    for i in range(count):
        priced = i % 2 == 0
        events.append(
            UsageEventIn(
                user_id=random.choice(users),
                idempotency_key=f"req-{i}-{uuid.uuid4().hex[:6]}",
                provider="openai",
                model=random.choice(list(PRICES)),
                prompt_tokens=random.randint(0, 5000),
                completion_tokens=random.randint(0, 5000),
                input_cost_micro_usd=random.randint(0, 900) if priced else None,
                output_cost_micro_usd=random.randint(0, 900) if priced else None,
                credits=random.randint(0, max_credits),
                occurred_at=last_month if i % 7 == 0 else now,
            )
        )
    return events


def cost(event: UsageEventIn) -> int:
    """What the ledger should charge for an event, computed here independently of SQL."""
    input_price, output_price = PRICES[event.model]
    input_cost = event.input_cost_micro_usd
    output_cost = event.output_cost_micro_usd
    if input_cost is None:
        input_cost = -(-event.prompt_tokens * input_price // 10**6)
    if output_cost is None:
        output_cost = -(-event.completion_tokens * output_price // 10**6)
    return input_cost + output_cost


def month(at: datetime | None) -> str:
    assert at is not None
    return f"{at:%Y-%m}-01"


def expected_periods(events: Sequence[UsageEventIn]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(user, month) -> (tokens, cost, requests), summed in Python."""
    totals: dict[tuple[str, str], tuple[int, int, int]] = {}
    for e in events:
        key = (str(e.user_id), month(e.occurred_at))
        tokens, spent, requests = totals.get(key, (0, 0, 0))
        totals[key] = (
            tokens + e.prompt_tokens + e.completion_tokens,
            spent + cost(e),
            requests + 1,
        )
    return totals


def recorded_periods(
    database_url: str, users: Sequence[uuid.UUID]
) -> dict[tuple[str, str], tuple[int, int, int]]:
    with sql_connection(database_url) as conn:
        rows = conn.execute(
            "select user_id::text, period_start::text, tokens_used, cost_used_micro_usd, "
            "requests_used from usage_periods where user_id = any(%s) and requests_used > 0",
            (list(users),),
        ).fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


def balances(database_url: str, users: Sequence[uuid.UUID]) -> dict[str, int]:
    with sql_connection(database_url) as conn:
        rows = conn.execute(
            "select user_id::text, credit_balance from user_accounts where user_id = any(%s)",
            (list(users),),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def credits_by_user(events: Sequence[UsageEventIn]) -> Counter[str]:
    spent: Counter[str] = Counter()
    for e in events:
        spent[str(e.user_id)] += e.credits
    return spent


def chunks(items: Sequence[UsageEventIn], sizes: Iterator[int]) -> list[list[UsageEventIn]]:
    out, start = [], 0
    while start < len(items):
        size = next(sizes)
        out.append(list(items[start : start + size]))
        start += size
    return out


def event(user: uuid.UUID, key: str, tokens: int, *, credits: int = 0, at: int = 0) -> UsageEventIn:
    return UsageEventIn(
        user_id=user,
        idempotency_key=key,
        provider="x",
        model="m",
        prompt_tokens=tokens,
        completion_tokens=0,
        input_cost_micro_usd=0,
        output_cost_micro_usd=0,
        credits=credits,
        occurred_at=this_month_start() + timedelta(seconds=at),
    )


@pytest.fixture
def pool(database_url: str) -> Iterator[Database]:
    """A pool big enough for every thread to hold its own transaction."""
    database = Database(database_url, max_size=THREADS)
    yield database
    database.close()


def test_every_event_sent_twice_in_shuffled_batches_is_charged_once(
    db: Database, database_url: str
) -> None:
    users = [uuid.uuid4() for _ in range(5)]
    for user in users:
        give_plan(db, user, tokens=10**12, credits=100_000)
    events = random_events(users, 600, max_credits=3)
    deliveries = events * 2
    random.shuffle(deliveries)

    results = [
        record_batch(db, batch)
        for batch in chunks(deliveries, iter(lambda: random.randint(1, 150), None))
    ]

    assert sum(r.recorded for r in results) == len(events)
    assert sum(r.duplicates for r in results) == len(events)
    assert sum(r.credits_charged for r in results) == sum(e.credits for e in events)
    assert recorded_periods(database_url, users) == expected_periods(events)
    spent = credits_by_user(events)
    assert balances(database_url, users) == {str(u): 100_000 - spent[str(u)] for u in users}


def test_concurrent_batches_with_overlapping_keys_record_each_event_once(
    pool: Database, database_url: str
) -> None:
    """THREADS threads each send every event, in their own order and batch sizes, for users who
    have no account yet (so accounts, periods and plan credits are created concurrently too)."""
    users = [uuid.uuid4() for _ in range(30)]
    events = random_events(users, 1500, max_credits=1)

    def send_all(seed: int) -> list[BatchResult]:
        rng = random.Random(seed)
        mine = list(events)
        rng.shuffle(mine)
        return [
            record_batch(pool, batch)
            for batch in chunks(mine, iter(lambda: rng.randint(50, 1000), None))
        ]

    with ThreadPoolExecutor(THREADS) as threads:
        results = [r for batch in threads.map(send_all, range(THREADS)) for r in batch]

    assert sum(r.recorded for r in results) == len(events)
    assert sum(r.duplicates for r in results) == len(events) * (THREADS - 1)
    assert recorded_periods(database_url, users) == expected_periods(events)
    spent = credits_by_user(events)
    assert all(spent[str(u)] <= FREE_PLAN_CREDITS for u in users)  # every credit asked is owed
    assert balances(database_url, users) == {
        str(u): FREE_PLAN_CREDITS - spent[str(u)] for u in users
    }
    with sql_connection(database_url) as conn:
        (events_stored,) = conn.execute("select count(*) from usage_events").fetchone() or (0,)
    assert events_stored == len(events)


def test_a_repeated_key_inside_one_batch_keeps_the_first_occurrence(
    db: Database, database_url: str
) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10**9, credits=0)

    result = record_batch(db, [event(user, "same", 10), event(user, "same", 99)])

    assert (result.recorded, result.duplicates) == (1, 1)
    assert recorded_periods(database_url, [user]) == {
        (str(user), month(this_month_start())): (10, 0, 1)
    }


def test_credits_stop_at_zero_charging_events_in_the_order_they_happened(
    db: Database, database_url: str
) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=10**9, credits=10)

    result = record_batch(
        db,
        [
            event(user, "third", 1, credits=4, at=3),
            event(user, "first", 1, credits=4, at=1),
            event(user, "second", 1, credits=4, at=2),
        ],
    )

    assert result.credits_charged == 10
    with sql_connection(database_url) as conn:
        charged = conn.execute(
            "select idempotency_key, credits_charged from usage_events order by occurred_at"
        ).fetchall()
        moves = conn.execute(
            "select amount, balance_after from credit_transactions where kind = 'usage'"
        ).fetchall()
    assert charged == [("first", 4), ("second", 4), ("third", 2)]
    assert moves == [(-10, 0)]
    assert balances(database_url, [user]) == {str(user): 0}


def test_crossing_80_and_100_percent_is_reported_once_per_period_across_batches(
    db: Database,
) -> None:
    user = uuid.uuid4()
    give_plan(db, user, tokens=100, credits=0)

    first = record_batch(db, [event(user, "a", 50, at=1), event(user, "b", 35, at=2)])
    second = record_batch(
        db, [event(user, "c", 5, at=3), event(user, "d", 20, at=4), event(user, "e", 20, at=5)]
    )
    again = record_batch(db, [event(user, "d", 20, at=4)])

    assert [t.percent for t in first.thresholds] == [80]
    assert [t.percent for t in second.thresholds] == [100]
    assert again.thresholds == ()
    with db.connection() as conn:
        keys = {
            row["id"]: row["idempotency_key"]
            for row in conn.execute("select id, idempotency_key from usage_events")
        }
    assert [keys[t.event_id] for t in first.thresholds + second.thresholds] == ["b", "d"]


def test_missing_costs_are_priced_from_the_model_price_table(
    db: Database, database_url: str
) -> None:
    user = uuid.uuid4()
    unpriced = UsageEventIn(
        user_id=user,
        idempotency_key="priced",
        provider="openai",
        model="gpt-4o",
        prompt_tokens=1000,
        completion_tokens=100,
    )

    record_batch(db, [unpriced])

    # gpt-4o: 2.50 $ per million prompt tokens, 10 $ per million completion tokens.
    assert ledger.remaining_quota(db, user)["cost_used_micro_usd"] == 2500 + 1000


def test_only_the_service_role_may_record_batches(database_url: str) -> None:
    with sql_connection(database_url) as conn:
        allowed = conn.execute(
            "select has_function_privilege(r, 'conveyor.record_usage_batch(json)', 'execute') "
            "from unnest(array['service_role', 'authenticated', 'anon']) r"
        ).fetchall()
    assert [row[0] for row in allowed] == [True, False, False]
