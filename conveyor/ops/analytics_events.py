"""Seed 001's typed analytics events (`lead_created`, `lead_analyzed`, `message_created`,
`subscription_created`, `subscription_updated`), read from the tables for a window of time under
the caller's RLS scope. Conveyor records these facts but publishes none of them, so an analytics
socket reads what is new on each roll-up tick (every 60 s) instead.

A lead is a user's first run (as `lead_trends` counts it) and its analysis that run completing;
a conversation is an agent session, a message an agent message; subscriptions are Stripe's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from conveyor.db import Connection, Database

# A row is reported once its time is this far behind the database's clock, so a transaction that
# began just before a read and commits just after it is still caught by the next window.
LAG_SECONDS = 1
# At most this many events of each kind per window (a burst is summarised by the next update).
MAX_PER_KIND = 200
# Each query's rows: `at` (the event's time) and its data's columns, oldest first; %(user)s null
# means every row RLS shows the caller.
QUERIES: tuple[tuple[str, str], ...] = (
    (
        # A run in the window with no earlier run of its user (workflow_runs_created, then
        # workflow_runs_user_created for the check).
        "lead_created",
        """select r.user_id as lead_id, r.user_id, r.created_at as at from workflow_runs r
            where (%(user)s::uuid is null or r.user_id = %(user)s)
              and r.created_at > %(since)s and r.created_at <= %(until)s
              and not exists (select 1 from workflow_runs e where e.user_id = r.user_id
                                 and (e.created_at, e.id) < (r.created_at, r.id))
            order by at limit %(limit)s""",
    ),
    (
        "lead_analyzed",
        """select r.user_id as lead_id, r.user_id, r.id as analysis_id, r.finished_at as at
             from workflow_runs r
            where (%(user)s::uuid is null or r.user_id = %(user)s) and r.status = 'completed'
              and r.finished_at > %(since)s and r.finished_at <= %(until)s
              and not exists (select 1 from workflow_runs e where e.user_id = r.user_id
                                 and (e.created_at, e.id) < (r.created_at, r.id))
            order by at limit %(limit)s""",
    ),
    (
        "message_created",
        """select m.session_id as conversation_id, m.id as message_id, s.user_id,
                  m.created_at as at
             from agent_messages m join agent_sessions s on s.id = m.session_id
            where (%(user)s::uuid is null or s.user_id = %(user)s)
              and m.created_at > %(since)s and m.created_at <= %(until)s
            order by at limit %(limit)s""",
    ),
    (
        "subscription_created",
        """select stripe_subscription_id as subscription_id, user_id, plan_id as plan,
                  created_at as at
             from user_subscriptions where (%(user)s::uuid is null or user_id = %(user)s)
              and created_at > %(since)s and created_at <= %(until)s
            order by at limit %(limit)s""",
    ),
    (
        "subscription_updated",
        """select stripe_subscription_id as subscription_id, user_id, plan_id as plan,
                  updated_at as at
             from user_subscriptions where (%(user)s::uuid is null or user_id = %(user)s)
              and updated_at > %(since)s and updated_at <= %(until)s and updated_at > created_at
            order by at limit %(limit)s""",
    ),
)
# The document names each event's time differently.
TIME_FIELD = {
    "lead_created": "created_at",
    "lead_analyzed": "completed_at",
    "message_created": "created_at",
    "subscription_created": "created_at",
    "subscription_updated": "updated_at",
}


def window_end(conn: Connection) -> datetime:
    """Where a window may end now: the database's clock, LAG_SECONDS behind."""
    row = conn.execute(
        "select now() - make_interval(secs => %s) as until", (LAG_SECONDS,)
    ).fetchone()
    assert row is not None
    until: datetime = row["until"]
    return until


def start(db: Database) -> datetime:
    """The start of a new socket's first window: only what happens from now on is reported."""
    with db.connection() as conn:
        return window_end(conn)


def events_since(
    db: Database, claims: dict[str, Any], since: datetime, *, user_id: UUID | None
) -> tuple[list[tuple[str, dict[str, Any]]], datetime]:
    """(the events after `since`, oldest first, as (name, data); where the next window starts)
    for everything RLS lets the caller see (user_id None) or one user's rows."""
    found: list[tuple[datetime, str, dict[str, Any]]] = []
    with db.user_transaction(claims) as conn:
        until = window_end(conn)
        for name, query in QUERIES:
            rows = conn.execute(
                query,
                {"user": user_id, "since": since, "until": until, "limit": MAX_PER_KIND},
            ).fetchall()
            for row in rows:
                data = {key: _text(value) for key, value in row.items() if key != "at"}
                data[TIME_FIELD[name]] = row["at"].isoformat()
                found.append((row["at"], name, data))
    found.sort(key=lambda item: item[0])
    return [(name, data) for _, name, data in found], max(until, since)


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, UUID) else value
