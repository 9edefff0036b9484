"""`/api/auth`: exchange a Supabase access token for a Conveyor backend token (seed 002's
endpoint, served as its document describes it)."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel

from conveyor.auth.supabase_auth import UserRejected
from conveyor.auth.tenancy import has_admin_role, personal_tenant, record_audit
from conveyor.auth.tokens import Principal, TokenVerifier, bearer_token, mint_backend_token
from conveyor.errors import ConveyorError, Forbidden
from web.auth import client_ip, public
from web.compat import fastapi_errors
from web.context import get_db, get_settings, supabase_auth
from web.openapi import contract


class ExchangeResponse(BaseModel):
    """`POST /api/auth/exchange-token`."""

    backend_token: str
    user_id: UUID
    tenant_id: UUID
    expires_in: int


bp = Blueprint("identity", __name__)
fastapi_errors.install(bp)  # seed 002 is a FastAPI endpoint: errors carry `detail` too


def presented_token() -> str:
    """The Supabase token sent: `Authorization: Bearer <token>`, or the bare token (seed 002
    strips an optional `Bearer ` prefix)."""
    header = (request.headers.get("Authorization") or "").strip()
    if header and " " not in header:
        return header
    return bearer_token(header)


def checked_with_supabase(principal: Principal, token: str) -> Principal:
    """The caller as Supabase Auth knows them now, when it is configured (seed 002 asks it with
    the caller's token): a signed-out, deleted or banned user is refused."""
    auth = supabase_auth()
    if auth is None:
        return principal
    user = auth.current_user(token)
    if user.id != principal.user_id:
        raise UserRejected("Supabase Auth names another user for this token.")
    if user.is_banned():
        raise UserRejected(f"This user is banned in Supabase Auth until {user.banned_until}.")
    return principal.model_copy(update={"email": user.email or None})


@bp.post("/api/auth/exchange-token")
@bp.post("/api/auth/exchange-token/")
@public  # verified here rather than in the hook, so failed attempts are audited too
@contract({200: ExchangeResponse})
def exchange_token() -> tuple[Response, int]:
    """A Supabase user's token in, `{backend_token, user_id, tenant_id}` out (7 days by default).

    With SUPABASE_URL set, the user is checked with Supabase Auth first (`GET /auth/v1/user`):
    a signed-out, deleted or banned user gets 401 SUPABASE_USER_REJECTED. The backend token
    carries `user_id`, `tenant_id`, `role` (`user` or `admin`), `email` and `exp`."""
    db = get_db()
    audit = {"ip": client_ip(), "user_agent": request.user_agent.string}
    try:
        token = presented_token()
        verifier: TokenVerifier = current_app.extensions["conveyor.verifier"]
        principal = verifier.verify(token)
        if principal.kind != "supabase":
            raise Forbidden("Exchange a Supabase access token; this one was issued by Conveyor.")
        principal = checked_with_supabase(principal, token)
    except ConveyorError as exc:
        record_audit(
            db, action="auth.exchange", outcome="failure", details={"code": exc.code}, **audit
        )
        raise
    user_id = principal.require_user()
    tenant_id = personal_tenant(db, user_id)
    settings = get_settings()
    admin = principal.is_admin or has_admin_role(db, user_id)
    backend_token = mint_backend_token(
        principal,
        tenant_id,
        secret=settings.api_secret(),
        ttl_seconds=settings.backend_token_ttl_seconds,
        role="admin" if admin else "user",
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
        backend_token=backend_token,
        user_id=user_id,
        tenant_id=tenant_id,
        expires_in=settings.backend_token_ttl_seconds,
    )
    return jsonify(body.model_dump(mode="json")), 200
