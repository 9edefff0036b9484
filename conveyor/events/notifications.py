"""User notifications: created inside the transaction of what they report, published on Redis
after commit, listed and marked read under RLS.

For producers (billing, usage, runs), the whole API is two calls:

    with db.transaction() as conn:
        ...  # the change being reported, e.g. applying a Stripe invoice.payment_failed
        note = notify(conn, user_id, PAYMENT_FAILED, "error", "Payment failed",
                      "Your card was declined; update it to keep your plan.",
                      action_url="/billing", metadata={"invoice": invoice_id},
                      dedupe_key=f"stripe:{event_id}")
    publish_notifications(publisher, [note] if note else [])

`notify` returns None when `dedupe_key` was already used for that user (a redelivered task or a
retried webhook), so a repeat notifies nobody twice. Publishing is best effort: a websocket
client that missed the message catches up from the table with `since`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from conveyor.db import Connection, Database
from conveyor.errors import NotFound
from conveyor.events.run_events import EventPublisher
from conveyor.pagination import Listing, user_page

Severity = Literal["info", "success", "warning", "error"]

# Types the API produces; producers may add their own (lower-case identifiers).
RUN_COMPLETED = "run_completed"
RUN_FAILED = "run_failed"
QUOTA_WARNING = "quota_warning"
QUOTA_EXCEEDED = "quota_exceeded"
PAYMENT_FAILED = "payment_failed"
CREDITS_LOW = "credits_low"
WAITING_FOR_CREDITS = "waiting_for_credits"

NOTIFICATION_CREATED = "notification_created"
COLUMNS = (
    "id, user_id, seq, notification_type, severity, title, message, action_url, metadata, "
    "read_at, created_at"
)


class NotificationNotFound(NotFound):
    """That notification does not exist (or is not yours)."""

    code = "NOTIFICATION_NOT_FOUND"


class Notification(BaseModel):
    """One notification, as stored and as the websocket sends it."""

    id: UUID
    user_id: UUID
    seq: int
    notification_type: str
    severity: Severity
    title: str
    message: str
    action_url: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    read_at: datetime | None = None
    created_at: datetime

    @property
    def topic(self) -> str:
        """The websocket topic of the notification's user."""
        return user_topic(self.user_id)

    def view(self) -> dict[str, Any]:
        """The JSON shape clients read (REST and websocket alike)."""
        return {
            # `id` is seed 001's name for `notification_id` (its websocket envelope's data).
            "id": str(self.id),
            "notification_id": str(self.id),
            "user_id": str(self.user_id),
            "seq": self.seq,
            "notification_type": self.notification_type,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "action_url": self.action_url,
            "created_at": self.created_at.isoformat(),
            "read": self.read_at is not None,
            "read_at": self.read_at.isoformat() if self.read_at else None,
            "metadata": self.metadata,
        }

    def envelope(self) -> dict[str, Any]:
        """The message a `/api/ws/notifications` subscriber receives."""
        return {
            "type": "event",
            "channel": "notifications",
            "topic": self.topic,
            "seq": self.seq,
            "event": NOTIFICATION_CREATED,
            "data": self.view(),
            "ts": self.created_at.isoformat(),
        }


def _with_columns(query: str) -> sql.Composed:
    """query with `{columns}` replaced by the notification columns (a constant)."""
    return sql.SQL(query).format(columns=sql.SQL(COLUMNS))


def user_topic(user_id: UUID | str) -> str:
    """The topic of one user's notifications."""
    return f"user:{user_id}"


def notify(
    conn: Connection,
    user_id: UUID,
    notification_type: str,
    severity: Severity,
    title: str,
    message: str,
    *,
    action_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> Notification | None:
    """Create a notification inside the caller's transaction (service role); None if this user
    was already notified under `dedupe_key`. Publish the result after commit."""
    row = conn.execute(
        _with_columns(
            """
        with counter as (
          insert into notification_counters as c (user_id, last_seq) values (%(user)s, 1)
          on conflict (user_id) do update set last_seq = c.last_seq + 1
          returning last_seq)
        insert into notifications
          (user_id, seq, notification_type, severity, title, message, action_url, metadata,
           dedupe_key)
        select %(user)s, counter.last_seq, %(type)s, %(severity)s, %(title)s, %(message)s,
               %(url)s, %(metadata)s, %(key)s
          from counter
        on conflict (user_id, dedupe_key) do nothing
        returning {columns}
        """
        ),
        {
            "user": user_id,
            "type": notification_type,
            "severity": severity,
            "title": title[:200],
            "message": message[:2000],
            "url": action_url,
            "metadata": Jsonb(metadata or {}),
            "key": dedupe_key,
        },
    ).fetchone()
    return Notification.model_validate(row) if row is not None else None


def publish_notifications(publisher: EventPublisher, notifications: Sequence[Notification]) -> None:
    """After commit: push the notifications to their users' websocket subscribers."""
    if notifications:
        publisher.publish_messages([(n.topic, n.envelope()) for n in notifications])


def notify_run_finished(conn: Connection, run: dict[str, Any]) -> Notification | None:
    """The notification for a run row that just completed or failed (others notify nobody)."""
    status = run["status"]
    if status not in ("completed", "failed"):
        return None
    name = run["workflow_id"]
    severity: Severity
    if status == "completed":
        kind, severity, title = RUN_COMPLETED, "success", f"{name} completed"
        text = f"Run {run['id']} of {name} completed."
    else:
        kind, severity, title = RUN_FAILED, "error", f"{name} failed"
        text = f"Run {run['id']} of {name} failed: {run['error'] or 'no reason recorded'}"
    return notify(
        conn,
        run["user_id"],
        kind,
        severity,
        title,
        text,
        action_url=f"/api/runs/{run['id']}",
        metadata={"workflow_run_id": str(run["id"]), "workflow_id": name, "status": status},
        dedupe_key=f"run:{run['id']}:{status}",
    )


def notify_quota(conn: Connection, user_id: UUID, percent: int) -> Notification | None:
    """The notification for a quota threshold (80 or 100 percent) crossed this period; the ledger
    reports each threshold once a period, the dedupe key makes a retried caller safe too."""
    period = conn.execute(
        "select to_char(conveyor_period_start(now()), 'YYYY-MM') as period"
    ).fetchone()
    assert period is not None
    severity: Severity
    if percent >= 100:
        kind, severity, title = QUOTA_EXCEEDED, "error", "Monthly quota used up"
        text = "You have used all of this month's quota; new runs are refused until the reset."
    else:
        kind, severity, title = QUOTA_WARNING, "warning", f"{percent}% of your monthly quota used"
        text = f"You have used {percent}% of this month's quota."
    return notify(
        conn,
        user_id,
        kind,
        severity,
        title,
        text,
        action_url="/api/user/quota",
        metadata={"percent": percent, "period": period["period"]},
        dedupe_key=f"quota:{period['period']}:{percent}",
    )


def notify_waiting_for_credits(
    conn: Connection, user_id: UUID, run_id: UUID, step: str, needed: int, available: int
) -> Notification | None:
    """A run's model call needs more credits than the user has free: it waits for a top-up."""
    return notify(
        conn,
        user_id,
        WAITING_FOR_CREDITS,
        "warning",
        "A run is waiting for credits",
        f"Step {step!r} needs {needed} credits and {available} are free; the run resumes when "
        "credits arrive.",
        action_url=f"/api/runs/{run_id}",
        metadata={"run_id": str(run_id), "step": step, "needed": needed, "available": available},
        dedupe_key=f"credits:{run_id}:{step}",
    )


NOTIFICATIONS = Listing(
    table="notifications",
    columns=COLUMNS,
    time_column="created_at",
    id_type="uuid",
    where="user_id = %(user)s and (not %(unread)s or read_at is null)",
)


def list_notifications(
    db: Database,
    claims: dict[str, Any],
    *,
    user_id: UUID,
    unread: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[Notification], str | None]:
    """The caller's notifications under RLS, newest first, optionally only unread ones."""
    return user_page(
        db,
        claims,
        NOTIFICATIONS,
        Notification.model_validate,
        params={"user": user_id, "unread": unread},
        limit=limit,
        cursor=cursor,
    )


def unread_count(db: Database, claims: dict[str, Any], user_id: UUID) -> int:
    """How many of the caller's notifications are unread."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            "select count(*) as n from notifications where user_id = %s and read_at is null",
            (user_id,),
        ).fetchone()
    return int(row["n"]) if row else 0


def notifications_since(
    db: Database, claims: dict[str, Any], user_id: UUID, since: int, *, limit: int = 500
) -> list[Notification]:
    """The user's notifications numbered after `since`, oldest first (websocket replay)."""
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            _with_columns(
                "select {columns} from notifications "
                "where user_id = %s and seq > %s order by seq limit %s"
            ),
            (user_id, since, limit),
        ).fetchall()
    return [Notification.model_validate(row) for row in rows]


def last_seq(db: Database, claims: dict[str, Any], user_id: UUID) -> int:
    """The highest seq of the user's notifications (0 if none): where a live stream starts."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            "select coalesce(max(seq), 0) as seq from notifications where user_id = %s",
            (user_id,),
        ).fetchone()
    return int(row["seq"]) if row else 0


def get_notification(
    db: Database, claims: dict[str, Any], user_id: UUID, notification_id: UUID
) -> Notification:
    """One of user_id's notifications; anyone else's is not found, an admin's reading included
    (RLS lets admins read every row; this endpoint is the user's own, like the listing)."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            _with_columns("select {columns} from notifications where id = %s and user_id = %s"),
            (notification_id, user_id),
        ).fetchone()
    if row is None:
        raise NotificationNotFound(f"notification {notification_id} does not exist")
    return Notification.model_validate(row)


def mark_read(db: Database, claims: dict[str, Any], notification_id: UUID) -> Notification:
    """Mark one of the caller's notifications read (idempotent); someone else's is not found."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            _with_columns(
                "update notifications set read_at = coalesce(read_at, now()) "
                "where id = %s returning {columns}"
            ),
            (notification_id,),
        ).fetchone()
    if row is None:
        raise NotificationNotFound(f"notification {notification_id} does not exist")
    return Notification.model_validate(row)


def mark_all_read(db: Database, claims: dict[str, Any], user_id: UUID) -> int:
    """Mark every unread notification of the caller read; returns how many changed."""
    with db.user_transaction(claims) as conn:
        cursor = conn.execute(
            "update notifications set read_at = now() where user_id = %s and read_at is null",
            (user_id,),
        )
        return cursor.rowcount
