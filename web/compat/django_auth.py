"""Seed 003's authentication endpoints: health, and register, login, user info and logout as
proxies to Supabase Auth (`conveyor.auth.supabase_auth`, as seed 004's sign-up and sign-in)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, Field

from conveyor.auth.supabase_auth import AuthUnavailable
from conveyor.auth.tenancy import has_admin_role
from conveyor.auth.tokens import bearer_token
from conveyor.errors import Forbidden
from conveyor.ledger import accounts
from web import health
from web.auth import public
from web.body import parse_body
from web.compat import fastapi_errors
from web.compat.django_common import DjangoBody, uncounted
from web.compat.fastapi_tokens import EMAIL_PATTERN
from web.context import get_db, get_principal, get_supabase_auth, supabase_auth
from web.openapi import contract

bp = Blueprint("django_auth", __name__)


class Credentials(DjangoBody):
    """`{email, password}`; register also takes the template's optional `user_metadata`."""

    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=1024)


class Registration(Credentials):
    """`{email, password, user_metadata?}`."""

    user_metadata: dict[str, Any] | None = None


class RegisteredView(BaseModel):
    """The Supabase Auth user just registered (`confirmation_sent_at` is null when the project
    confirms emails automatically)."""

    id: UUID
    email: str | None
    app_metadata: dict[str, Any]
    user_metadata: dict[str, Any]
    aud: str
    confirmation_sent_at: datetime | None
    created_at: datetime


class SignedInUser(BaseModel):
    """The user a session belongs to."""

    id: UUID
    email: str | None


class LoginView(BaseModel):
    """Supabase's session for the email and password."""

    access_token: str
    token_type: str
    expires_in: int
    expires_at: int | None
    refresh_token: str
    user: SignedInUser


class UserInfoView(BaseModel):
    """The caller: `id`, `username` and `supabase_id` are all the Supabase user id; `claims` are
    the verified token's; `supabase_data` is the user as Supabase Auth knows them now (null for a
    Conveyor-issued token, or when SUPABASE_URL is not set)."""

    id: UUID
    username: str
    email: str | None
    supabase_id: UUID
    roles: list[str]
    claims: dict[str, Any]
    supabase_data: dict[str, Any] | None


class MessageView(BaseModel):
    """A plain acknowledgement."""

    message: str


@bp.get("/api/health/")
@public
@uncounted
@contract({200: health.HealthView}, auth=None)
def health_check() -> tuple[Response, int]:
    """`{status: "ok"}` (with each dependency's state); 503 naming the ones down."""
    response, status = health.health()
    if status != 200:
        fastapi_errors.with_detail(response, None)
    return response, status


@bp.post("/api/register/")
@public
@contract({201: RegisteredView}, body=Registration, auth=None)
def register() -> tuple[Response, int]:
    """`{email, password, user_metadata?}` → 201 with the new Supabase Auth user. A signed-in user
    gets a Conveyor account (free plan, this month's credits) now; one awaiting confirmation at
    their first sign-in, since Supabase then answers an already registered email with a made-up
    user."""
    auth = get_supabase_auth()
    body = parse_body(Registration)
    result = auth.sign_up(body.email, body.password, body.user_metadata)
    user = result.user
    if result.session is not None:
        accounts.account(get_db(), user.id)
    view = RegisteredView.model_validate(user.model_dump())
    return jsonify(view.model_dump(mode="json")), 201


@bp.post("/api/login/")
@public
@contract({200: LoginView}, body=Credentials, auth=None)
def login() -> Response:
    """`{email, password}` → Supabase's access and refresh tokens, which the whole API accepts."""
    auth = get_supabase_auth()
    body = parse_body(Credentials)
    result = auth.sign_in(body.email, body.password)
    if result.session is None:
        raise AuthUnavailable("Supabase Auth signed the user in without a session.")
    accounts.account(get_db(), result.user.id)
    session = result.session
    view = LoginView(
        access_token=session.access_token,
        token_type=session.token_type,
        expires_in=session.expires_in,
        expires_at=session.expires_at,
        refresh_token=session.refresh_token,
        user=SignedInUser(id=result.user.id, email=result.user.email),
    )
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/user/")
@contract({200: UserInfoView})
def user_info() -> Response:
    """The caller, from the verified token, with Supabase Auth's current record of them."""
    principal = get_principal()
    user_id = principal.require_user()
    auth = supabase_auth()
    supabase_data = None
    if auth is not None and principal.kind == "supabase":
        token = bearer_token(request.headers.get("Authorization"))
        supabase_data = auth.current_user(token).model_dump(mode="json")
    admin = principal.is_admin or has_admin_role(get_db(), user_id)
    view = UserInfoView(
        id=user_id,
        username=str(user_id),
        email=principal.email or (supabase_data or {}).get("email"),
        supabase_id=user_id,
        roles=[principal.role, *(["admin"] if admin else [])],
        claims=principal.claims,
        supabase_data=supabase_data,
    )
    return jsonify(view.model_dump(mode="json"))


@bp.post("/api/logout/")
@contract({200: MessageView})
def logout() -> Response:
    """Revoke the Supabase session of the access token sent (other devices stay signed in)."""
    auth = get_supabase_auth()
    principal = get_principal()
    principal.require_user()
    if principal.kind != "supabase":
        raise Forbidden("Log out with the Supabase access token, not a Conveyor-issued one.")
    auth.sign_out(bearer_token(request.headers.get("Authorization")))
    return jsonify({"message": "Logged out successfully"})
