"""Webhook endpoints users register: create (the secret is returned this once), list, delete,
rotate the secret; and the per-user secret that signs deliveries to a run's own `webhook_url`.
Writes go through the service role with the owner in every `where`; reads run under RLS."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import sql
from pydantic import BaseModel, Field

from conveyor.db import Database
from conveyor.errors import BadRequest, NotFound
from conveyor.outbound.url_safety import check_webhook_url
from conveyor.pagination import Listing, user_page
from conveyor.payload import Payload

RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
QUOTA_EXCEEDED = "quota.exceeded"
RUN_WAITING_FOR_CREDITS = "run.waiting_for_credits"
EVENT_TYPES: tuple[str, ...] = (
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_CANCELLED,
    QUOTA_EXCEEDED,
    RUN_WAITING_FOR_CREDITS,
)
# After a rotation the previous secret keeps signing this long, so receivers can switch over.
ROTATION_GRACE_HOURS = 24
PUBLIC_COLUMNS = (
    "id, url, events, description, consecutive_failures, disabled_at, disabled_reason, "
    "previous_secret_expires_at, created_at"
)


class WebhookEndpointNotFound(NotFound):
    """That webhook endpoint does not exist (or is not yours)."""

    code = "WEBHOOK_ENDPOINT_NOT_FOUND"


class UnknownEventType(BadRequest):
    """That event type does not exist; see docs/webhooks.md for the list."""

    code = "UNKNOWN_EVENT_TYPE"


class TooManyEndpoints(BadRequest):
    """You have registered as many webhook endpoints as allowed; delete one first."""

    code = "TOO_MANY_WEBHOOK_ENDPOINTS"


class EndpointCreate(Payload):
    """`POST /api/webhook-endpoints`."""

    url: str = Field(min_length=1, max_length=2000)
    events: list[str] = Field(min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500)


class EndpointView(BaseModel):
    """An endpoint as its owner sees it: never with its secret."""

    id: UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EndpointView:
        """The view of an endpoint row."""
        return cls.model_validate({**row, "enabled": row["disabled_at"] is None})


class CreatedEndpoint(EndpointView):
    """The answer to a create: the view plus the signing secret, shown this once."""

    secret: str


class RotatedSecret(BaseModel):
    """The answer to a rotation: the new secret, and until when the previous one also signs."""

    id: UUID
    secret: str
    previous_secret_expires_at: datetime


def new_secret() -> str:
    """A fresh signing secret (`whsec_` and 256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_events(events: list[str]) -> list[str]:
    """The event types, deduplicated in order, or UnknownEventType naming the first unknown one."""
    for event in events:
        if event not in EVENT_TYPES:
            raise UnknownEventType(
                f"Unknown event type {event!r}; choose from {', '.join(EVENT_TYPES)}."
            )
    return list(dict.fromkeys(events))


def create_endpoint(
    db: Database, user_id: UUID, body: EndpointCreate, *, allow_private: bool, max_endpoints: int
) -> CreatedEndpoint:
    """Register an endpoint after checking its URL (public, resolvable) and event types."""
    events = check_events(body.events)
    url = check_webhook_url(body.url, allow_private=allow_private)
    with db.transaction() as conn:
        # Serialises one user's creates, so two at once cannot both pass the limit.
        conn.execute(
            "select pg_advisory_xact_lock(hashtext('webhook_endpoints:' || %s))", (user_id,)
        )
        count = conn.execute(
            "select count(*) as n from webhook_endpoints where user_id = %s", (user_id,)
        ).fetchone()
        if count is not None and count["n"] >= max_endpoints:
            raise TooManyEndpoints(
                f"You already have {count['n']} webhook endpoints, the most allowed; delete one "
                "you no longer use."
            )
        row = conn.execute(
            sql.SQL(
                """
                insert into webhook_endpoints (user_id, url, events, description, secret)
                values (%s, %s, %s, %s, %s)
                returning {columns}, secret
                """
            ).format(columns=sql.SQL(PUBLIC_COLUMNS)),
            (user_id, url, events, body.description, new_secret()),
        ).fetchone()
    assert row is not None
    return CreatedEndpoint.model_validate({**row, "enabled": True})


ENDPOINTS = Listing(
    table="webhook_endpoints",
    columns=PUBLIC_COLUMNS,
    time_column="created_at",
    id_type="uuid",
    where="user_id = %(user)s",
)


def list_endpoints(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[EndpointView], str | None]:
    """The caller's endpoints under RLS, newest first."""
    return user_page(
        db,
        claims,
        ENDPOINTS,
        EndpointView.from_row,
        params={"user": user_id},
        limit=limit,
        cursor=cursor,
    )


def delete_endpoint(db: Database, user_id: UUID, endpoint_id: UUID) -> None:
    """Delete one of the user's endpoints with its delivery history; pending deliveries stop."""
    with db.transaction() as conn:
        deleted = conn.execute(
            "delete from webhook_endpoints where id = %s and user_id = %s returning id",
            (endpoint_id, user_id),
        ).fetchone()
    if deleted is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")


def rotate_secret(db: Database, user_id: UUID, endpoint_id: UUID) -> RotatedSecret:
    """Give an endpoint a new secret; the previous one also signs for ROTATION_GRACE_HOURS."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            update webhook_endpoints
               set previous_secret = secret, secret = %s,
                   previous_secret_expires_at = now() + make_interval(hours => %s)
             where id = %s and user_id = %s
            returning id, secret, previous_secret_expires_at
            """,
            (new_secret(), ROTATION_GRACE_HOURS, endpoint_id, user_id),
        ).fetchone()
    if row is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
    return RotatedSecret.model_validate(row)


def require_endpoint(db: Database, claims: dict[str, Any], endpoint_id: UUID) -> None:
    """WebhookEndpointNotFound unless the caller can see this endpoint (RLS decides)."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            "select id from webhook_endpoints where id = %s", (endpoint_id,)
        ).fetchone()
    if row is None:
        raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")


def signing_secret(db: Database, user_id: UUID) -> str:
    """The user's secret for deliveries to runs' own `webhook_url`, created on first use."""
    with db.transaction() as conn:
        conn.execute(
            "insert into webhook_signing_secrets (user_id, secret) values (%s, %s) "
            "on conflict (user_id) do nothing",
            (user_id, new_secret()),
        )
        row = conn.execute(
            "select secret from webhook_signing_secrets where user_id = %s", (user_id,)
        ).fetchone()
    assert row is not None
    return str(row["secret"])
