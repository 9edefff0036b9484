"""What the daily and monthly jobs change, against Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from conveyor.db import Database
from conveyor.ops import maintenance
from conveyor.settings import Settings

SETTINGS = {"maintenance_batch_size": 100, "usage_events_retention_days": 30}


def add_usage(db: Database, user: uuid.UUID, count: int, at: datetime, model: str = "m") -> None:
    with db.transaction() as conn:
        conn.execute(
            """
            insert into usage_events (user_id, idempotency_key, provider, model, prompt_tokens,
                                      completion_tokens, input_cost_micro_usd,
                                      output_cost_micro_usd, occurred_at, success)
            select %s, gen_random_uuid()::text, 'p', %s, 10, 5, 3, 2, %s, i %% 4 <> 0
              from generate_series(1, %s) i
            """,
            (user, model, at, count),
        )


def count_usage(db: Database) -> int:
    with db.transaction() as conn:
        row = conn.execute("select count(*) as n from usage_events").fetchone()
    assert row is not None
    return int(row["n"])


def test_retention_deletes_old_rows_in_batches_and_keeps_recent_ones(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    add_usage(db, user, 450, now - timedelta(days=40))
    add_usage(db, user, 7, now - timedelta(days=2))

    deleted = maintenance.purge(
        db, "usage_events", "occurred_at", now - timedelta(days=30), batch=100
    )

    assert deleted == 450
    assert count_usage(db) == 7


def test_daily_maintenance_reports_what_it_did(db: Database, settings: Settings) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    add_usage(db, user, 120, now - timedelta(days=31))
    add_usage(db, user, 8, now)

    counts = maintenance.daily_maintenance(db, settings, now.date().isoformat())

    assert counts["usage_events"] == 120
    assert counts["usage_daily_rows"] == 1
    with db.transaction() as conn:
        row = conn.execute("select * from usage_daily where user_id = %s", (user,)).fetchone()
    assert row is not None
    assert (row["requests"], row["prompt_tokens"], row["cost_micro_usd"], row["failed"]) == (
        8,
        80,
        40,
        2,
    )


def test_daily_maintenance_drops_run_counters_of_days_before_yesterday(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    with db.transaction() as conn:
        for age in (0, 1, 2, 9):  # each insert counts its run on its own UTC day
            conn.execute(
                "insert into workflow_runs (user_id, kind, workflow_id, created_at) "
                "values (%s, 'agent', 'echo', %s)",
                (user, now - timedelta(days=age)),
            )

    counts = maintenance.daily_maintenance(db, settings, now.date().isoformat())

    with db.transaction() as conn:
        days = conn.execute(
            "select day, runs from runs_per_day where user_id = %s order by day", (user,)
        ).fetchall()
    assert counts["runs_per_day"] == 2
    assert [(row["day"], row["runs"]) for row in days] == [
        ((now - timedelta(days=1)).date(), 1),
        (now.date(), 1),
    ]


def test_the_usage_rollup_gives_the_same_totals_when_run_again(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    today = datetime.now(UTC).date()
    add_usage(db, user, 5, datetime.now(UTC), model="a")
    add_usage(db, user, 3, datetime.now(UTC), model="b")

    assert maintenance.rollup_usage(db, today) == 2
    assert maintenance.rollup_usage(db, today) == 2
    with db.transaction() as conn:
        rows = conn.execute(
            "select model, requests from usage_daily where user_id = %s order by model", (user,)
        ).fetchall()
    assert rows == [{"model": "a", "requests": 5}, {"model": "b", "requests": 3}]


def test_artifact_folders_of_runs_that_no_longer_exist_are_deleted(
    db: Database, settings: Settings
) -> None:
    root = settings.data_dir / "artifacts"
    orphan = root / str(uuid.uuid4()) / "1"
    orphan.mkdir(parents=True)
    (orphan / "step.json").write_text("{}")
    (root / "not-a-run").mkdir()

    assert maintenance.delete_orphaned_artifacts(db, settings) == 1
    assert not orphan.exists()
    assert (root / "not-a-run").exists()


def test_the_monthly_reset_opens_periods_grants_once_and_notifies_lapsed_subscribers(
    db: Database, settings: Settings
) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    lapsed = users[0]
    with db.transaction() as conn:
        for user in users:
            conn.execute("select conveyor_ensure_account(%s)", (user,))
        conn.execute(
            """
            insert into user_subscriptions (stripe_subscription_id, user_id, plan_id, status,
                                            state_at, state_event_id, updated_at)
            values ('sub_gone', %s, 'basic', 'canceled', '2098-12-20', 'evt_1', '2098-12-20')
            """,
            (lapsed,),
        )

    counts = maintenance.monthly_quota_reset(db, settings, "2099-01")

    assert counts["accounts"] == 3
    assert counts["credit_grants"] == 3
    assert counts["periods_open"] == 3
    assert counts["lapsed_notified"] == 1
    again = maintenance.monthly_quota_reset(db, settings, "2099-01")
    assert (again["credit_grants"], again["lapsed_notified"]) == (0, 0)
    with db.transaction() as conn:
        notes = conn.execute(
            "select user_id, notification_type from notifications where notification_type = %s",
            (maintenance.SUBSCRIPTION_LAPSED,),
        ).fetchall()
    assert notes == [{"user_id": lapsed, "notification_type": "subscription_lapsed"}]
