"""Seed 000 (Witchcraft's auth and AI usage backend): `/api/auth/register`, `/api/auth/login`
(Supabase Auth's, through the `supabase` package), `/api/ai/track-usage` (witchcraft_usage),
`/api/agent/session` and `/api/agent/message` (witchcraft_sessions), calling the same domain code
as Conveyor's own API."""

from __future__ import annotations

from uuid import UUID

from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from conveyor.auth.supabase_auth import AuthUnavailable
from conveyor.errors import ConveyorError
from web.auth import audit_request, public
from web.compat import witchcraft_sessions, witchcraft_usage
from web.compat.witchcraft_common import WitchcraftBody, bp, parse_witchcraft_body, post
from web.context import get_db, get_supabase_auth
from web.openapi import contract

__all__ = ["bp", "witchcraft_sessions", "witchcraft_usage"]  # importing them adds their routes

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
VERIFY_EMAIL = "User created. Please verify your email."
CONFIRMED = "User created. You can sign in now."


class LoginBody(WitchcraftBody):
    """loginUser's `{email, password}`."""

    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=1024)


class RegisterBody(LoginBody):
    """registerUser's `{email, password, name?}`; the name goes to Supabase's user_metadata."""

    name: str | None = Field(default=None, min_length=1, max_length=200)


class CamelView(BaseModel):
    """An answer in Witchcraft's camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel, serialize_by_alias=True, validate_by_name=True
    )


class Registered(CamelView):
    """`{userId, message}`: the new Supabase Auth user."""

    user_id: UUID
    email: str | None
    message: str


class LoggedIn(CamelView):
    """`{accessToken, userId, email}`: Supabase's access token (accepted by every endpoint), with
    the rest of Supabase's session beside it."""

    access_token: str
    user_id: UUID
    email: str | None
    refresh_token: str
    token_type: str
    expires_in: int
    expires_at: int | None


@post("/api/auth/register")
@public
@contract({200: Registered}, body=RegisterBody, auth=None)
def register() -> Response:
    """Create a Supabase Auth user with email and password (and `name` as user metadata)."""
    auth = get_supabase_auth()
    body = parse_witchcraft_body(RegisterBody)
    metadata = {"name": body.name} if body.name else None
    result = auth.sign_up(body.email.lower(), body.password, user_metadata=metadata)
    view = Registered(
        user_id=result.user.id,
        email=result.user.email,
        # With confirmations off the user is confirmed already: nothing waits in their inbox.
        message=CONFIRMED if result.user.email_confirmed_at else VERIFY_EMAIL,
    )
    return jsonify(view.model_dump(mode="json"))


@post("/api/auth/login")
@public
@contract({200: LoggedIn}, body=LoginBody, auth=None)
def login() -> Response:
    """Sign in with email and password: Supabase's session. Attempts are audited (IP and user
    agent, never the password), as the document logs them."""
    auth = get_supabase_auth()
    body = parse_witchcraft_body(LoginBody)
    db = get_db()
    try:
        result = auth.sign_in(body.email.lower(), body.password)
    except ConveyorError as exc:
        if exc.status < 500:
            audit_request(
                db,
                action="auth.login",
                outcome="failure",
                details={"code": exc.code},
            )
        raise
    session = result.session
    if session is None:  # GoTrue always sends one with a successful password grant
        raise AuthUnavailable("Supabase Auth signed in without a session.")
    audit_request(
        db,
        action="auth.login",
        outcome="success",
        actor_user_id=result.user.id,
        subject=str(result.user.id),
    )
    view = LoggedIn(
        access_token=session.access_token,
        user_id=result.user.id,
        email=result.user.email,
        refresh_token=session.refresh_token,
        token_type=session.token_type,
        expires_in=session.expires_in,
        expires_at=session.expires_at,
    )
    return jsonify(view.model_dump(mode="json"))
