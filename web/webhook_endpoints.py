"""`/api/webhook-endpoints` and `/api/deliveries`: register where events go, see and replay
deliveries. Only the owner sees an endpoint; anyone else's answers 404."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from conveyor import outbound
from conveyor.constants import TASK_DELIVER_WEBHOOK
from conveyor.outbound import endpoints as webhook_endpoints
from conveyor.outbound.endpoints import (
    CreatedEndpoint,
    EndpointCreate,
    EndpointView,
    RotatedSecret,
    WebhookEndpointNotFound,
)
from conveyor.outbound.outbox import DeliveryView
from conveyor.pagination import PageQuery
from web.body import parse_body, parse_query
from web.context import get_db, get_enqueuer, get_principal, get_settings
from web.openapi import contract, listing
from web.pages import own_page

bp = Blueprint("webhook_endpoints", __name__)


def endpoint_id_of(raw: str) -> UUID:
    """The endpoint id in a path, or 404 (a malformed id names no endpoint)."""
    try:
        return UUID(raw)
    except ValueError:
        raise WebhookEndpointNotFound(f"webhook endpoint {raw!r} does not exist") from None


@bp.post("/api/webhook-endpoints")
@contract({201: CreatedEndpoint}, body=EndpointCreate)
def create_endpoint() -> tuple[Response, int]:
    """Register an endpoint: 201 with its signing secret, shown this once."""
    body = parse_body(EndpointCreate)
    settings = get_settings()
    created = webhook_endpoints.create_endpoint(
        get_db(),
        get_principal().require_user(),
        body,
        allow_private=settings.allow_private_webhooks,
        max_endpoints=settings.webhook_max_endpoints,
    )
    return jsonify(created.model_dump(mode="json")), 201


@bp.get("/api/webhook-endpoints")
@contract({200: listing("webhook_endpoints", EndpointView)}, query=PageQuery)
def list_endpoints() -> Response:
    """`{webhook_endpoints, next_cursor}`: the caller's endpoints, newest first, no secrets."""
    return own_page("webhook_endpoints", webhook_endpoints.list_endpoints)


@bp.delete("/api/webhook-endpoints/<endpoint_id>")
@contract({204: None})
def delete_endpoint(endpoint_id: str) -> tuple[str, int]:
    """Delete an endpoint and its delivery history: 204."""
    target = endpoint_id_of(endpoint_id)
    webhook_endpoints.delete_endpoint(get_db(), get_principal().require_user(), target)
    return "", 204


@bp.post("/api/webhook-endpoints/<endpoint_id>/rotate-secret")
@contract({200: RotatedSecret})
def rotate_secret(endpoint_id: str) -> Response:
    """A new secret, shown this once; the previous one also signs for 24 hours."""
    target = endpoint_id_of(endpoint_id)
    rotated = webhook_endpoints.rotate_secret(get_db(), get_principal().require_user(), target)
    return jsonify(rotated.model_dump(mode="json"))


@bp.get("/api/webhook-endpoints/<endpoint_id>/deliveries")
@contract({200: listing("deliveries", DeliveryView)}, query=PageQuery)
def list_deliveries(endpoint_id: str) -> Response:
    """`{deliveries, next_cursor}`: the endpoint's deliveries, newest first, with attempts."""
    target = endpoint_id_of(endpoint_id)
    query = parse_query(PageQuery)
    principal = get_principal()
    principal.require_user()
    claims = principal.rls_claims()
    webhook_endpoints.require_endpoint(get_db(), claims, target)
    deliveries, next_cursor = outbound.list_deliveries(
        get_db(), claims, target, limit=query.limit, cursor=query.cursor
    )
    return jsonify(
        {
            "deliveries": [d.model_dump(mode="json") for d in deliveries],
            "next_cursor": next_cursor,
        }
    )


@bp.post("/api/deliveries/<delivery_id>/redeliver")
@contract({202: DeliveryView})
def redeliver(delivery_id: str) -> tuple[Response, int]:
    """Send a delivery's event again (same event id) as a new delivery: 202."""
    try:
        target = UUID(delivery_id)
    except ValueError:
        raise outbound.DeliveryNotFound(
            f"webhook delivery {delivery_id!r} does not exist"
        ) from None
    delivery = outbound.redeliver(get_db(), get_principal().require_user(), target)
    get_enqueuer().enqueue(TASK_DELIVER_WEBHOOK, str(delivery.id))
    return jsonify(delivery.model_dump(mode="json")), 202


@bp.get("/api/webhook-signing-secret")
@contract({200: "application/json"})
def signing_secret() -> Response:
    """`{secret}`: what signs deliveries to runs' own `webhook_url` (created on first use)."""
    secret = webhook_endpoints.signing_secret(get_db(), get_principal().require_user())
    return jsonify({"secret": secret})
