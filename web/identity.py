"""`/api/auth`: exchange a Supabase access token for a Conveyor backend token."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from conveyor.auth.tenancy import personal_tenant, record_audit
from conveyor.auth.tokens import mint_backend_token
from conveyor.errors import ConveyorError, Forbidden
from web.auth import client_ip, public, verify_request_token
from web.context import get_db, get_settings
from web.openapi import contract


class ExchangeResponse(BaseModel):
    """`POST /api/auth/exchange-token`."""

    backend_token: str
    user_id: UUID
    tenant_id: UUID
    expires_in: int


bp = Blueprint("identity", __name__)


@bp.post("/api/auth/exchange-token")
@public  # verified here rather than in the hook, so failed attempts are audited too
@contract({200: ExchangeResponse})
def exchange_token() -> tuple[Response, int]:
    """A Supabase user's token in, `{backend_token, user_id, tenant_id}` out (7 days by default)."""
    db = get_db()
    audit = {"ip": client_ip(), "user_agent": request.user_agent.string}
    try:
        principal = verify_request_token()
        if principal.kind != "supabase":
            raise Forbidden("Exchange a Supabase access token; this one was issued by Conveyor.")
    except ConveyorError as exc:
        record_audit(
            db, action="auth.exchange", outcome="failure", details={"code": exc.code}, **audit
        )
        raise
    user_id = principal.require_user()
    tenant_id = personal_tenant(db, user_id)
    settings = get_settings()
    token = mint_backend_token(
        principal,
        tenant_id,
        secret=settings.api_secret(),
        ttl_seconds=settings.backend_token_ttl_seconds,
    )
    record_audit(
        db,
        action="auth.exchange",
        outcome="success",
        actor_user_id=user_id,
        subject=str(tenant_id),
        **audit,
    )
    body = ExchangeResponse(
        backend_token=token,
        user_id=user_id,
        tenant_id=tenant_id,
        expires_in=settings.backend_token_ttl_seconds,
    )
    return jsonify(body.model_dump(mode="json")), 200
