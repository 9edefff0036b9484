"""Every `/api` route needs a verified bearer token unless its view is marked `@public`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar
from uuid import UUID

import structlog
from flask import Flask, current_app, g, request

from conveyor.auth.tenancy import has_admin_role, record_audit
from conveyor.auth.tokens import Principal, TokenVerifier, bearer_token
from conveyor.db import Database
from web.context import get_db, get_principal

View = TypeVar("View", bound=Callable[..., object])


def public(view: View) -> View:
    """Mark a view as reachable without a token."""
    view.conveyor_public = True  # type: ignore[attr-defined]
    return view


def authenticate() -> None:
    """Before each request: verify the bearer token and put the Principal on `g`."""
    if not request.path.startswith("/api"):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or getattr(view, "conveyor_public", False):
        return  # unknown routes fall through to the JSON 404
    g.principal = verify_request_token()
    structlog.contextvars.bind_contextvars(
        user_id=str(g.principal.user_id) if g.principal.user_id else g.principal.subject
    )


def verify_request_token() -> Principal:
    """The Principal for this request's bearer token (TokenExpired / InvalidToken otherwise)."""
    verifier: TokenVerifier = current_app.extensions["conveyor.verifier"]
    return verifier.verify(bearer_token(request.headers.get("Authorization")))


def require_admin() -> Principal:
    """The caller, if an admin by token claim or by the user_roles table; else Forbidden."""
    principal = get_principal()
    if (
        not principal.is_admin
        and principal.user_id is not None
        and has_admin_role(get_db(), principal.user_id)
    ):
        principal = principal.model_copy(update={"is_admin": True})
        g.principal = principal
    principal.require_admin()
    return principal


def client_ip() -> str | None:
    """The caller's address: the socket's peer, or behind proxies (TRUSTED_PROXY_HOPS) the client
    they name in X-Forwarded-For."""
    return request.remote_addr


def audit_request(
    db: Database,
    *,
    action: str,
    outcome: Literal["success", "failure"] = "success",
    actor_user_id: UUID | None = None,
    subject: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """record_audit with this request's caller address and user agent."""
    record_audit(
        db,
        action=action,
        outcome=outcome,
        actor_user_id=actor_user_id,
        subject=subject,
        ip=client_ip(),
        user_agent=request.user_agent.string,
        details=details,
    )


def init_app(app: Flask) -> None:
    """Install the authentication hook."""
    app.before_request(authenticate)
