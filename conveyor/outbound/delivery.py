"""One delivery attempt: claim the delivery (a lease, fenced by its attempt number), sign and send
the event outside any transaction, record the attempt and decide what comes next: done, a retry
after exponential backoff with jitter, given up past the horizon, or the endpoint disabled."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from conveyor.db import Connection, Database
from conveyor.events.notifications import Notification, notify
from conveyor.outbound.http import EVENT_ID_HEADER, SIGNATURE_HEADER, SendResult, send, signature
from conveyor.settings import Settings

ENDPOINT_DISABLED = "webhook_endpoint_disabled"
# Time to finish a request past its timeouts before another worker may take the delivery over.
LEASE_MARGIN_SECONDS = 2.0


class DeliveryOutcome(StrEnum):
    """What one call of `deliver` did."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    GAVE_UP = "gave_up"
    ENDPOINT_DISABLED = "endpoint_disabled"
    SKIPPED = "skipped"  # finished, not due, held by another worker, or its endpoint is gone


@dataclass
class DeliveryResult:
    """The outcome, when to try again (seconds), and notifications to publish after commit."""

    outcome: DeliveryOutcome
    retry_in: float | None = None
    notifications: list[Notification] = field(default_factory=list)


@dataclass(frozen=True)
class Claimed:
    """A delivery this worker holds for one attempt."""

    id: UUID
    attempt: int
    url: str
    endpoint_id: UUID | None
    user_id: UUID
    created_at: datetime
    body: bytes
    event_id: str
    secrets: list[str]


def backoff_seconds(attempt: int, settings: Settings) -> float:
    """The wait after failed attempt n: base * 2^(n-1), capped, times a jitter in [0.5, 1]."""
    raw: float = min(
        settings.webhook_retry_base_seconds * 2 ** min(attempt - 1, 30),
        settings.webhook_retry_max_seconds,
    )
    # Jitter spreads retries of many deliveries that failed together; not for security.
    return raw * random.uniform(0.5, 1.0)  # noqa: S311


def lease_seconds(settings: Settings) -> float:
    """How long one attempt may hold its delivery."""
    return (
        settings.webhook_connect_timeout_seconds
        + settings.webhook_read_timeout_seconds
        + LEASE_MARGIN_SECONDS
    )


def event_body(event: dict[str, Any]) -> bytes:
    """The JSON body of an event: the same bytes on every attempt."""
    document = {
        "id": event["id"],
        "type": event["type"],
        "created": int(event["created_at"].timestamp()),
        "data": event["data"],
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def claim(db: Database, delivery_id: UUID, settings: Settings) -> Claimed | None:
    """Take a due, unheld, pending delivery for one attempt; None if there is nothing to do."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            update webhook_deliveries d
               set attempts = d.attempts + 1,
                   lease_until = now() + make_interval(secs => %(lease)s)
              from webhook_events e
             where d.id = %(id)s and e.id = d.event_id
               and d.status = 'pending'
               and d.next_attempt_at <= now() + interval '1 second'
               and (d.lease_until is null or d.lease_until < now())
            returning d.id, d.attempts, d.url, d.endpoint_id, d.user_id, d.created_at,
                      e.id as event_id, e.type, e.data, e.created_at as event_created_at
            """,
            {"id": delivery_id, "lease": lease_seconds(settings)},
        ).fetchone()
        if row is None:
            return None
        secrets = signing_secrets(conn, row["endpoint_id"], row["user_id"])
        if secrets is None:
            finish(conn, delivery_id, "failed", error="the endpoint is disabled")
            return None
    body = event_body(
        {
            "id": row["event_id"],
            "type": row["type"],
            "created_at": row["event_created_at"],
            "data": row["data"],
        }
    )
    return Claimed(
        id=row["id"],
        attempt=row["attempts"],
        url=row["url"],
        endpoint_id=row["endpoint_id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        body=body,
        event_id=row["event_id"],
        secrets=secrets,
    )


def signing_secrets(conn: Connection, endpoint_id: UUID | None, user_id: UUID) -> list[str] | None:
    """The secrets that sign for this target (the previous one too during a rotation's grace);
    None when the endpoint is disabled."""
    if endpoint_id is None:
        row = conn.execute(
            "select secret from webhook_signing_secrets where user_id = %s", (user_id,)
        ).fetchone()
        return [row["secret"]] if row is not None else []
    endpoint = conn.execute(
        """
        select secret, disabled_at,
               case when previous_secret_expires_at > now() then previous_secret end as previous
          from webhook_endpoints where id = %s
        """,
        (endpoint_id,),
    ).fetchone()
    if endpoint is None or endpoint["disabled_at"] is not None:
        return None
    return [endpoint["secret"]] + ([endpoint["previous"]] if endpoint["previous"] else [])


def finish(
    conn: Connection,
    delivery_id: UUID,
    status: str,
    *,
    status_code: int | None = None,
    error: str | None = None,
) -> None:
    """Give a pending delivery its final status."""
    conn.execute(
        """
        update webhook_deliveries
           set status = %s, last_status_code = coalesce(%s, last_status_code),
               last_error = left(%s, 2000), lease_until = null, finished_at = now()
         where id = %s and status = 'pending'
        """,
        (status, status_code, error, delivery_id),
    )


def deliver(db: Database, settings: Settings, delivery_id: UUID) -> DeliveryResult:
    """Make one attempt at a delivery and record it; a duplicate or early message is SKIPPED."""
    held = claim(db, delivery_id, settings)
    if held is None:
        return DeliveryResult(DeliveryOutcome.SKIPPED)
    timestamp = int(time.time())
    result = send(
        held.url,
        held.body,
        {
            SIGNATURE_HEADER: signature(held.body, held.secrets, timestamp=timestamp),
            EVENT_ID_HEADER: held.event_id,
        },
        allow_private=settings.allow_private_webhooks,
        connect_timeout=settings.webhook_connect_timeout_seconds,
        read_timeout=settings.webhook_read_timeout_seconds,
    )
    return record_attempt(db, settings, held, result)


def record_attempt(
    db: Database, settings: Settings, held: Claimed, result: SendResult
) -> DeliveryResult:
    """Store the attempt and what follows it, unless a successor took the delivery over."""
    outcome, retry_in = next_step(settings, held, result)
    notes: list[Notification] = []
    with db.transaction() as conn:
        still_ours = conn.execute(
            """
            update webhook_deliveries
               set status = %(status)s, last_status_code = %(code)s,
                   last_error = left(%(error)s, 2000),
                   lease_until = null,
                   next_attempt_at = case when %(retry)s::float8 is null then next_attempt_at
                                          else now() + make_interval(secs => %(retry)s) end,
                   enqueued_at = now(),
                   finished_at = case when %(status)s = 'pending' then null else now() end
             where id = %(id)s and attempts = %(attempt)s and status = 'pending'
            returning next_attempt_at
            """,
            {
                "status": {
                    DeliveryOutcome.SUCCEEDED: "succeeded",
                    DeliveryOutcome.RETRYING: "pending",
                }.get(outcome, "failed"),
                "code": result.status_code,
                "error": result.error,
                "retry": retry_in,
                "id": held.id,
                "attempt": held.attempt,
            },
        ).fetchone()
        if still_ours is None:
            return DeliveryResult(DeliveryOutcome.SKIPPED)
        conn.execute(
            """
            insert into webhook_delivery_attempts
              (delivery_id, attempt, status_code, latency_ms, error, next_attempt_at)
            values (%s, %s, %s, %s, left(%s, 2000), %s)
            """,
            (
                held.id,
                held.attempt,
                result.status_code,
                result.latency_ms,
                result.error,
                still_ours["next_attempt_at"] if retry_in is not None else None,
            ),
        )
        if held.endpoint_id is not None:
            note = update_endpoint_health(conn, settings, held.endpoint_id, result)
            if note is not None:
                notes.append(note)
                if outcome is DeliveryOutcome.RETRYING:
                    finish(conn, held.id, "failed", error="the endpoint was disabled")
                    outcome, retry_in = DeliveryOutcome.ENDPOINT_DISABLED, None
    return DeliveryResult(outcome, retry_in, notes)


def next_step(
    settings: Settings, held: Claimed, result: SendResult
) -> tuple[DeliveryOutcome, float | None]:
    """What follows an attempt's result: done, gone (410), a retry in n seconds, or giving up."""
    if result.ok:
        return DeliveryOutcome.SUCCEEDED, None
    if result.status_code == 410:
        return DeliveryOutcome.ENDPOINT_DISABLED, None
    delay = backoff_seconds(held.attempt, settings)
    horizon = held.created_at + timedelta(hours=settings.webhook_retry_hours)
    if datetime.now(held.created_at.tzinfo) + timedelta(seconds=delay) > horizon:
        return DeliveryOutcome.GAVE_UP, None
    return DeliveryOutcome.RETRYING, delay


def update_endpoint_health(
    conn: Connection, settings: Settings, endpoint_id: UUID, result: SendResult
) -> Notification | None:
    """Count the endpoint's failures in a row; 410 Gone or too many of them disable it and tell
    its owner (the notification is returned, to publish after commit)."""
    if result.ok:
        conn.execute(
            "update webhook_endpoints set consecutive_failures = 0 where id = %s",
            (endpoint_id,),
        )
        return None
    reason = (
        "the receiver answered 410 Gone"
        if result.status_code == 410
        else f"{settings.webhook_disable_after_failures} delivery attempts in a row failed"
    )
    row = conn.execute(
        """
        update webhook_endpoints
           set consecutive_failures = consecutive_failures + 1,
               disabled_at = case when %(gone)s or consecutive_failures + 1 >= %(limit)s
                                  then coalesce(disabled_at, now()) else disabled_at end,
               disabled_reason = case when disabled_at is null and
                                           (%(gone)s or consecutive_failures + 1 >= %(limit)s)
                                      then %(reason)s else disabled_reason end
         where id = %(id)s
        returning user_id, url, disabled_at
        """,
        {
            "gone": result.status_code == 410,
            "limit": settings.webhook_disable_after_failures,
            "reason": reason,
            "id": endpoint_id,
        },
    ).fetchone()
    if row is None or row["disabled_at"] is None:
        return None
    return notify(
        conn,
        row["user_id"],
        ENDPOINT_DISABLED,
        "error",
        "Webhook endpoint disabled",
        f"Conveyor stopped sending events to {row['url']}: {reason}. Register it again once it "
        "answers 2xx.",
        action_url="/api/webhook-endpoints",
        metadata={"endpoint_id": str(endpoint_id)},
        dedupe_key=f"webhook-endpoint:{endpoint_id}:disabled",
    )
