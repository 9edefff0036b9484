"""The outbound webhook outbox: an event and its deliveries are inserted in the transaction of what
they report; the queue only wakes workers, and `due_deliveries` finds what a lost message, a dead
worker or a backoff left waiting. Sending is conveyor/outbound/delivery.py's."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import sql
from pydantic import BaseModel

from conveyor.db import Connection, Database
from conveyor.errors import Conflict, NotFound
from conveyor.outbound.endpoints import (
    QUOTA_EXCEEDED,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_WAITING_FOR_CREDITS,
)
from conveyor.pagination import Listing, user_page

RUN_EVENT_TYPES = {"completed": RUN_COMPLETED, "failed": RUN_FAILED, "cancelled": RUN_CANCELLED}
DELIVERY_COLUMNS = (
    "id, event_id, endpoint_id, url, status, attempts, next_attempt_at, last_status_code, "
    "last_error, created_at, finished_at"
)
# The attempt log of each listed delivery, in one query with the page.
ATTEMPTS_COLUMN = """
    (select coalesce(json_agg(json_build_object(
              'attempt', a.attempt, 'status_code', a.status_code, 'latency_ms', a.latency_ms,
              'error', a.error, 'next_attempt_at', a.next_attempt_at, 'created_at', a.created_at)
            order by a.attempt), '[]'::json)
       from webhook_delivery_attempts a
      where a.delivery_id = webhook_deliveries.id) as attempt_log
"""


class DeliveryNotFound(NotFound):
    """That webhook delivery does not exist (or is not yours)."""

    code = "WEBHOOK_DELIVERY_NOT_FOUND"


class EndpointDisabled(Conflict):
    """The delivery's endpoint is disabled; register it again to receive events."""

    code = "WEBHOOK_ENDPOINT_DISABLED"


class AttemptView(BaseModel):
    """One try of a delivery."""

    attempt: int
    status_code: int | None
    latency_ms: int
    error: str | None
    next_attempt_at: datetime | None
    created_at: datetime


class DeliveryView(BaseModel):
    """A delivery as its owner sees it, with every attempt."""

    id: UUID
    event_id: str
    endpoint_id: UUID | None
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[AttemptView]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeliveryView:
        """The view of a delivery row; next_attempt_at only while one is still coming."""
        pending = row["status"] == "pending"
        return cls.model_validate(
            {**row, "next_attempt_at": row["next_attempt_at"] if pending else None}
        )


def new_event_id() -> str:
    """A fresh event id: receivers dedupe on it (`Conveyor-Event-Id`)."""
    return f"evt_{uuid.uuid4().hex}"


def record_event(
    conn: Connection,
    user_id: UUID,
    event_type: str,
    data: dict[str, Any],
    *,
    extra_url: str | None = None,
    queued: bool = True,
) -> list[UUID]:
    """In the caller's transaction: store the event with one pending delivery per enabled endpoint
    of the user subscribed to its type (and one to extra_url, a run's own URL). Stores nothing
    when nobody listens. Returns the delivery ids, to queue after commit; a caller that cannot
    queue passes queued=False and the re-queue job's next tick sends them."""
    rows = conn.execute(
        """
        with targets as (
          select id as endpoint_id, url from webhook_endpoints
           where user_id = %(user)s and disabled_at is null and %(type)s = any(events)
          union all
          select null::uuid, %(extra)s::text where %(extra)s::text is not null),
        event as (
          insert into webhook_events (id, user_id, type, data)
          select %(id)s, %(user)s, %(type)s, %(data)s::jsonb where exists (select 1 from targets)
          returning id)
        insert into webhook_deliveries (event_id, user_id, endpoint_id, url, enqueued_at)
        select event.id, %(user)s, targets.endpoint_id, targets.url,
               case when %(queued)s then now() else '-infinity'::timestamptz end
          from event, targets
        returning id
        """,
        {
            "user": user_id,
            "type": event_type,
            "extra": extra_url,
            "id": new_event_id(),
            "data": json.dumps(data, default=str),
            "queued": queued,
        },
    ).fetchall()
    return [row["id"] for row in rows]


def run_event_data(run: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a run.* event for a finished run row."""
    return {
        "run_id": str(run["id"]),
        "kind": run["kind"],
        "workflow_id": run["workflow_id"],
        "status": run["status"],
        "output": run["output"],
        "output_url": run["output_url"],
        "error": run["error"],
        "error_code": run["error_code"],
        "metadata": run["metadata"],
        "created_at": run["created_at"].isoformat(),
        "finished_at": run["finished_at"].isoformat() if run["finished_at"] else None,
    }


def record_run_finished(
    conn: Connection, run: dict[str, Any], *, queued: bool = True
) -> list[UUID]:
    """In the run's final transaction: the run.* event of a run row that just ended."""
    event_type = RUN_EVENT_TYPES.get(run["status"])
    if event_type is None:
        return []
    return record_event(
        conn,
        run["user_id"],
        event_type,
        run_event_data(run),
        extra_url=run.get("webhook_url"),
        queued=queued,
    )


def record_quota_threshold(conn: Connection, user_id: UUID, percent: int) -> None:
    """In the transaction that crossed a quota threshold: `quota.exceeded` at 100 percent, sent
    by the re-queue job's next tick."""
    if percent < 100:
        return
    period = conn.execute(
        "select to_char(conveyor_period_start(now()), 'YYYY-MM') as period"
    ).fetchone()
    assert period is not None
    data = {"user_id": str(user_id), "percent": percent, "period": period["period"]}
    record_event(conn, user_id, QUOTA_EXCEEDED, data, queued=False)


def record_waiting_for_credits(conn: Connection, user_id: UUID, data: dict[str, Any]) -> None:
    """In the transaction that parked a run for credits: `run.waiting_for_credits`, sent by the
    re-queue job's next tick."""
    record_event(conn, user_id, RUN_WAITING_FOR_CREDITS, data, queued=False)


def due_deliveries(db: Database, *, older_than_seconds: float, limit: int = 500) -> list[UUID]:
    """Pending deliveries nobody holds whose time came at least older_than_seconds ago (their
    message was lost, or their worker died): marked queued now, to queue again."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update webhook_deliveries
               set enqueued_at = now()
             where id in (
               select id from webhook_deliveries
                where status = 'pending'
                  and greatest(next_attempt_at, enqueued_at)
                      < now() - make_interval(secs => %(age)s)
                  and (lease_until is null or lease_until < now())
                order by next_attempt_at
                limit %(limit)s
                for update skip locked)
            returning id
            """,
            {"age": older_than_seconds, "limit": limit},
        ).fetchall()
    return [row["id"] for row in rows]


DELIVERIES = Listing(
    table="webhook_deliveries",
    columns=f"{DELIVERY_COLUMNS}, {ATTEMPTS_COLUMN}",
    time_column="created_at",
    id_type="uuid",
    where="endpoint_id = %(endpoint)s",
)


def list_deliveries(
    db: Database,
    claims: dict[str, Any],
    endpoint_id: UUID,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[DeliveryView], str | None]:
    """An endpoint's deliveries under RLS, newest first, each with its attempts."""
    return user_page(
        db,
        claims,
        DELIVERIES,
        DeliveryView.from_row,
        params={"endpoint": endpoint_id},
        limit=limit,
        cursor=cursor,
    )


def redeliver(db: Database, user_id: UUID, delivery_id: UUID) -> DeliveryView:
    """A new pending delivery of the same event (same event id) to the same target."""
    with db.transaction() as conn:
        source = conn.execute(
            """
            select d.event_id, d.endpoint_id, d.url, e.disabled_at
              from webhook_deliveries d
              left join webhook_endpoints e on e.id = d.endpoint_id
             where d.id = %s and d.user_id = %s
            """,
            (delivery_id, user_id),
        ).fetchone()
        if source is None:
            raise DeliveryNotFound(f"webhook delivery {delivery_id} does not exist")
        if source["disabled_at"] is not None:
            raise EndpointDisabled(
                f"Endpoint {source['endpoint_id']} is disabled; register the URL again to "
                "receive events."
            )
        row = conn.execute(
            sql.SQL(
                """
                insert into webhook_deliveries (event_id, user_id, endpoint_id, url)
                values (%s, %s, %s, %s)
                returning {columns}, '[]'::json as attempt_log
                """
            ).format(columns=sql.SQL(DELIVERY_COLUMNS)),
            (source["event_id"], user_id, source["endpoint_id"], source["url"]),
        ).fetchone()
    assert row is not None
    return DeliveryView.from_row(row)
