"""conveyor.forget_user: every row of a user goes, everyone else's stays, and what is kept is
kept on purpose (sql/20261207001200_user_erasure.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conveyor.db import Database
from conveyor.ops.erasure import forget_user
from tests.user_rows import (
    FORGOTTEN_PER_TABLE,
    every_row,
    rows_of,
    seed_user,
    store_batch,
    usage_event,
    user_id_tables,
)


@pytest.fixture
def owner(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The test database as its owner, autocommit."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_the_seeded_user_has_a_row_in_every_table_with_a_user_id(
    owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, user_id)

    assert [table for table, count in rows_of(owner, user_id).items() if count == 0] == []
    assert len(user_id_tables(owner)) >= 18


def test_forget_user_leaves_no_row_of_the_user_in_any_table_with_a_user_id(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, user_id)

    forget_user(db, user_id)

    assert rows_of(owner, user_id) == dict.fromkeys(user_id_tables(owner), 0)


def test_forget_user_leaves_every_other_row_as_it_was(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, uuid.uuid4())
    before = every_row(owner)
    seed_user(owner, user_id)

    forget_user(db, user_id)

    after = every_row(owner)
    assert {t: rows for t, rows in after.items() if t != "audit_logs"} == {
        t: rows for t, rows in before.items() if t != "audit_logs"
    }
    assert before["audit_logs"] <= after["audit_logs"]


def test_forget_user_returns_the_rows_it_removed_per_table(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, user_id)

    assert forget_user(db, user_id) == dict.fromkeys(FORGOTTEN_PER_TABLE, 1)


def test_forgetting_a_user_again_finds_nothing(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, user_id)
    forget_user(db, user_id)

    assert forget_user(db, user_id) == dict.fromkeys(FORGOTTEN_PER_TABLE, 0)


def test_an_audit_entry_the_user_made_is_kept_without_actor_address_or_browser(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    seed_user(owner, user_id)

    forget_user(db, user_id)

    assert owner.execute(
        "select action, actor_user_id, ip, user_agent from conveyor.audit_logs"
    ).fetchall() == [("auth.exchange", None, None, None)]


def test_a_waiting_usage_batch_keeps_the_other_users_events_and_loses_the_forgotten_ones(
    db: Database, owner: psycopg.Connection[Any], user_id: uuid.UUID
) -> None:
    other = uuid.uuid4()
    kept = [usage_event(other, "first"), usage_event(other, "second")]
    batch = store_batch(owner, [kept[0], usage_event(user_id, "theirs"), kept[1]])

    counts = forget_user(db, user_id)

    assert counts["usage_batch_events"] == 1
    assert owner.execute(
        "select events::jsonb, event_count from conveyor.usage_batches where id = %s", (batch,)
    ).fetchall() == [(kept, 2)]
