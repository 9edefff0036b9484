"""Notifications in Postgres: numbered per user in commit order, once per dedupe key, readable and
markable only by their user (RLS), and created by runs finishing and quota thresholds."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from conveyor import runs
from conveyor.db import Database, sql_connection
from conveyor.events import notifications
from conveyor.events.notifications import NotificationNotFound, notify
from conveyor.ledger.ingest import UsageEventIn, record_batch
from tests.support import new_run


def claims_of(user: uuid.UUID) -> dict[str, object]:
    return {"sub": str(user), "role": "authenticated"}


def notify_user(db: Database, user: uuid.UUID, title: str, **kwargs: object) -> int | None:
    with db.transaction() as conn:
        note = notify(conn, user, "test", "info", title, "body", **kwargs)  # type: ignore[arg-type]
    return note.seq if note else None


def test_a_users_notifications_are_numbered_one_by_one(db: Database) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    assert [
        notify_user(db, user, "a"),
        notify_user(db, other, "b"),
        notify_user(db, user, "c"),
    ] == [
        1,
        1,
        2,
    ]


def test_concurrent_notifications_get_distinct_gap_free_numbers(db: Database) -> None:
    user = uuid.uuid4()
    with ThreadPoolExecutor(4) as pool:
        seqs = list(pool.map(lambda i: notify_user(db, user, f"n{i}"), range(40)))
    assert sorted(seqs) == list(range(1, 41))  # type: ignore[type-var]


def test_a_repeated_dedupe_key_notifies_once(db: Database) -> None:
    user = uuid.uuid4()
    first = notify_user(db, user, "Payment failed", dedupe_key="stripe:evt_1")
    again = notify_user(db, user, "Payment failed", dedupe_key="stripe:evt_1")
    assert (first, again) == (1, None)
    listed, _ = notifications.list_notifications(
        db, claims_of(user), user_id=user, unread=False, limit=10, cursor=None
    )
    assert [n.title for n in listed] == ["Payment failed"]


def test_rls_shows_a_user_only_their_own_notifications(db: Database) -> None:
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    notify_user(db, owner, "yours")
    assert notifications.notifications_since(db, claims_of(stranger), owner, 0) == []
    assert [n.title for n in notifications.notifications_since(db, claims_of(owner), owner, 0)] == [
        "yours"
    ]


def test_a_stranger_cannot_mark_a_notification_read(db: Database) -> None:
    owner = uuid.uuid4()
    with db.transaction() as conn:
        note = notify(conn, owner, "test", "info", "t", "m")
    assert note is not None
    with pytest.raises(NotificationNotFound):
        notifications.mark_read(db, claims_of(uuid.uuid4()), note.id)
    assert notifications.unread_count(db, claims_of(owner), owner) == 1


def test_users_cannot_create_or_rewrite_notifications(db: Database, database_url: str) -> None:
    user = uuid.uuid4()
    notify_user(db, user, "t")
    with sql_connection(database_url) as conn:
        conn.execute("set role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, false)", (f'{{"sub": "{user}"}}',)
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update notifications set title = 'forged'")


def test_a_finished_run_notifies_its_owner_once(db: Database) -> None:
    user = uuid.uuid4()
    created = new_run(db, "echo", user_id=user)
    claimed = runs.claim_run(db, created.id, lease_seconds=60)
    assert claimed is not None
    runs.finish_run(db, claimed[0], runs.Outcome(error="boom", error_code="BOOM"))

    [note] = notifications.notifications_since(db, claims_of(user), user, 0)
    assert (note.notification_type, note.severity) == ("run_failed", "error")
    assert note.metadata["workflow_run_id"] == str(created.id)
    assert "boom" in note.message


def test_quota_thresholds_in_a_usage_batch_notify_once_each(db: Database) -> None:
    user = uuid.uuid4()
    with db.transaction() as conn:
        conn.execute(
            "insert into plans values (%s, 'test', 100, 1000000000000, 100000, 100000, 0)",
            (f"p{user.hex[:12]}",),
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id) values (%s, %s)",
            (user, f"p{user.hex[:12]}"),
        )

    def event(key: str, tokens: int) -> UsageEventIn:
        return UsageEventIn(
            user_id=user,
            idempotency_key=key,
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=tokens,
            completion_tokens=0,
            input_cost_micro_usd=0,
            output_cost_micro_usd=0,
        )

    first = record_batch(db, [event("a", 85)])
    repeated = record_batch(db, [event("a", 85)])
    second = record_batch(db, [event("b", 20), event("c", 5)])

    assert [n.notification_type for n in first.notifications] == ["quota_warning"]
    assert repeated.notifications == ()
    assert [n.notification_type for n in second.notifications] == ["quota_exceeded"]
    stored = notifications.notifications_since(db, claims_of(user), user, 0)
    assert [(n.seq, n.metadata["percent"]) for n in stored] == [(1, 80), (2, 100)]
