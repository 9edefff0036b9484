"""`/api/payments`: Stripe Checkout for users, the Stripe webhook, and the admin view of the
webhook inbox. What payments change is applied by the worker (conveyor/billing/handlers.py)."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import Field

from conveyor import metrics
from conveyor.billing import inbox
from conveyor.billing.checkout import CheckoutRequest, CheckoutSession, create_checkout_session
from conveyor.billing.inbox import StripeEventView
from conveyor.billing.stripe_api import client_for
from conveyor.constants import TASK_PROCESS_STRIPE_EVENT
from conveyor.errors import InvalidSignature
from conveyor.pagination import PageQuery
from conveyor.payload import Payload
from web.auth import public, require_admin
from web.body import idempotency_key, parse_body, parse_query, read_body
from web.context import get_db, get_enqueuer, get_principal, get_settings
from web.openapi import contract, listing

bp = Blueprint("payments", __name__)

SIGNATURE_HEADER = "Stripe-Signature"


class StripeEventsQuery(PageQuery):
    """`?status=&limit=&cursor=` of the admin inbox listing."""

    status: Literal["received", "processed", "skipped", "ignored", "failed"] | None = None
    limit: int = Field(default=50, ge=1, le=200)


class NoBody(Payload):
    """A request that takes no fields."""


@bp.post("/api/payments/create-checkout-session")
@contract(
    {201: CheckoutSession},
    body=CheckoutRequest,
    headers={"Idempotency-Key": "Retrying with the same key returns the first result."},
)
def create_checkout() -> tuple[Response, int]:
    """`{price_id?, mode?, success_url?, cancel_url?, customer_email?, metadata?, quantity?}` →
    201 `{id, url}`. An Idempotency-Key returns the same session for the same request."""
    principal = get_principal()
    user_id = principal.require_user()
    body = parse_body(CheckoutRequest)
    key = idempotency_key()
    settings = get_settings()
    session = create_checkout_session(
        get_db(),
        settings,
        client_for(settings),
        user_id=user_id,
        email=principal.email,
        request=body,
        idempotency_key=key,
    )
    return jsonify(session.model_dump()), 201


@bp.post("/api/payments/webhook")
@public
@contract(
    {200: "application/json"},
    auth=None,
    headers={
        SIGNATURE_HEADER: "Stripe's signature of the raw body; a missing or wrong one is 400."
    },
)
def stripe_webhook() -> Response:
    """Verify the signature on the raw body, store the event once, queue it, answer 200. A repeat
    delivery is answered 200 too and changes nothing. If the queue is down the event is still
    stored: the reconciler processes it, so Stripe need not retry."""
    settings = get_settings()
    payload = read_body()
    try:
        inbox.verify_signature(
            payload,
            request.headers.get(SIGNATURE_HEADER),
            settings.stripe_webhook_secrets(),
            settings.stripe_webhook_tolerance_seconds,
        )
    except InvalidSignature:
        metrics.WEBHOOK_EVENTS.labels("unknown", "invalid_signature").inc()
        raise
    event = inbox.parse_event(payload)
    stored = inbox.store_event(get_db(), event, payload)
    metrics.WEBHOOK_EVENTS.labels(event.type, "stored" if stored.inserted else "duplicate").inc()
    queued = inbox.needs_processing(stored.status) and get_enqueuer().enqueue(
        TASK_PROCESS_STRIPE_EVENT, event.id
    )
    return jsonify(
        {
            "received": True,
            "id": event.id,
            "duplicate": not stored.inserted,
            "status": stored.status,
            "queued": queued,
        }
    )


@bp.get("/api/admin/stripe-events")
@contract({200: listing("events", StripeEventView)}, query=StripeEventsQuery, auth="admin")
def list_stripe_events() -> Response:
    """Admins: stored Stripe events, newest received first: `?status=&limit=&cursor=`."""
    require_admin()
    query = parse_query(StripeEventsQuery)
    events, next_cursor = inbox.list_events(
        get_db(), status=query.status, limit=query.limit, cursor=query.cursor
    )
    return jsonify(
        {"events": [e.model_dump(mode="json") for e in events], "next_cursor": next_cursor}
    )


@bp.post("/api/admin/stripe-events/<event_id>/replay")
@contract({202: "application/json"}, auth="admin")
def replay_stripe_event(event_id: str) -> tuple[Response, int]:
    """Admins: process an event again now (after fixing what made it fail). Applying an event
    twice changes nothing twice. 202 `{event, queued}`."""
    require_admin()
    if request.content_length:
        parse_body(NoBody)
    event = inbox.requeue(get_db(), event_id)
    queued = get_enqueuer().enqueue(TASK_PROCESS_STRIPE_EVENT, event.id)
    return jsonify({"event": event.model_dump(mode="json"), "queued": queued}), 202
