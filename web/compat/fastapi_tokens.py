"""Seed 004 (FastAPI + Supabase tokens): `/api/v1` auth, profile and token balance, each path also
with a trailing slash. The balance is Conveyor's prepaid credit ledger; auth is Supabase Auth's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from conveyor import ledger
from conveyor.auth import profiles
from conveyor.auth.supabase_auth import AuthResult
from conveyor.auth.tenancy import has_admin_role
from conveyor.auth.tokens import Principal, bearer_token
from conveyor.billing.purchases import HOW_TO_BUY, PurchaseRequired, claim_credit_pack
from conveyor.billing.stripe_api import client_for
from conveyor.errors import Forbidden, InsufficientCredits, InvalidInput
from conveyor.ledger import accounts
from conveyor.ledger.balances import MAX_CREDITS
from web.auth import audit_request, public
from web.body import parse_body
from web.compat import fastapi_errors
from web.context import get_db, get_principal, get_settings, get_supabase_auth
from web.credits import admin_add
from web.openapi import contract

PREFIX = "/api/v1"
CREDITS_WRITE_SCOPE = "credits:write"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

bp = Blueprint("fastapi_tokens", __name__)
fastapi_errors.install(bp)

View = TypeVar("View", bound=Callable[..., object])


def route(path: str, method: str) -> Callable[[View], View]:
    """Serve PREFIX + path and its trailing-slash form (FastAPI clients call either)."""

    def register(view: View) -> View:
        for rule in (PREFIX + path, PREFIX + path + "/"):
            bp.add_url_rule(rule, view_func=view, methods=[method])
        return view

    return register


class FastApiBody(BaseModel):
    """A seed 004 request body: unknown fields are ignored, as FastAPI's models ignore them."""

    model_config = ConfigDict(extra="ignore")


class Credentials(FastApiBody):
    """`{email, password}` of sign-up and sign-in."""

    email: str = Field(min_length=3, max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=1024)


class ProfileBody(FastApiBody):
    """`{profile_data}`: the user's document (a JSON object)."""

    profile_data: dict[str, Any]


class TokenAmount(FastApiBody):
    """`{amount}`: a whole number of tokens > 0."""

    amount: int = Field(strict=True, gt=0, le=MAX_CREDITS)


class AddTokens(TokenAmount):
    """`{amount, checkout_session_id?, user_id?}`: the paid Stripe checkout a user claims, or (for
    admins and service tokens) the user to credit."""

    checkout_session_id: str | None = Field(default=None, pattern=r"^cs_[A-Za-z0-9_]{1,250}$")
    user_id: UUID | None = None


class UserView(BaseModel):
    """The signed-in user."""

    id: UUID
    email: str | None
    created_at: datetime


class AuthView(BaseModel):
    """Sign-up and sign-in: Supabase's session tokens (null until the email is confirmed, when
    the project asks for confirmation), the user and their `token` balance."""

    access_token: str | None
    refresh_token: str | None
    token_type: str | None
    expires_in: int | None
    expires_at: int | None
    user: UserView
    token: int
    message: str


class MessageView(BaseModel):
    """A plain acknowledgement."""

    message: str


class TokenBalance(BaseModel):
    """The caller's token balance (Conveyor's credits)."""

    user_id: UUID
    token: int
    updated_at: datetime


class TokensChanged(BaseModel):
    """The balance after an add or deduct; `added` is 0 when the checkout was already granted."""

    user_id: UUID
    token: int
    added: int | None = None
    deducted: int | None = None
    checkout_session_id: str | None = None
    message: str


def auth_view(result: AuthResult, message: str) -> Response:
    """The AuthView of a sign-up or sign-in; a signed-in user gets their Conveyor account here.
    One awaiting confirmation gets it at first sign-in: Supabase then answers an already
    registered email with a made-up user, who must not get an account (and credits)."""
    session = result.session
    if session is not None:
        balance = accounts.account(get_db(), result.user.id).credit_balance
    else:
        balance = accounts.starting_credits(get_db())
    view = AuthView(
        access_token=session.access_token if session else None,
        refresh_token=session.refresh_token if session else None,
        token_type=session.token_type if session else None,
        expires_in=session.expires_in if session else None,
        expires_at=session.expires_at if session else None,
        user=UserView(
            id=result.user.id, email=result.user.email, created_at=result.user.created_at
        ),
        token=balance,
        message=message,
    )
    return jsonify(view.model_dump(mode="json"))


@route("/auth/signup", "POST")
@public
@contract({200: AuthView}, body=Credentials, auth=None)
def signup() -> Response:
    """`{email, password}` → the Supabase session, user and token balance (a new account starts
    with the free plan's monthly credits)."""
    auth = get_supabase_auth()
    body = parse_body(Credentials)
    result = auth.sign_up(body.email, body.password)
    confirm = "Signed up." if result.session else "Signed up; confirm your email, then sign in."
    return auth_view(result, confirm)


@route("/auth/signin", "POST")
@public
@contract({200: AuthView}, body=Credentials, auth=None)
def signin() -> Response:
    """`{email, password}` → the Supabase session, user and token balance."""
    auth = get_supabase_auth()
    body = parse_body(Credentials)
    return auth_view(auth.sign_in(body.email, body.password), "Signed in.")


@route("/auth/signout", "POST")
@contract({200: MessageView})
def signout() -> Response:
    """Revoke the Supabase session of the access token sent (other devices stay signed in)."""
    auth = get_supabase_auth()
    principal = get_principal()
    principal.require_user()
    if principal.kind != "supabase":
        raise Forbidden("Sign out with the Supabase access token, not a Conveyor-issued one.")
    auth.sign_out(bearer_token(request.headers.get("Authorization")))
    return jsonify({"message": "Signed out."})


@route("/profile", "GET")
@contract({200: profiles.ProfileView})
def get_profile() -> Response:
    """The caller's profile (404 PROFILE_NOT_FOUND before one is stored)."""
    principal = get_principal()
    found = profiles.get_profile(get_db(), principal.rls_claims(), principal.require_user())
    return jsonify(found.model_dump(mode="json"))


@route("/profile", "POST")
@contract({200: profiles.ProfileView}, body=ProfileBody)
def upsert_profile() -> Response:
    """`{profile_data}`: create the caller's profile or replace its document."""
    user_id = get_principal().require_user()
    body = parse_body(ProfileBody)
    return jsonify(
        profiles.upsert_profile(get_db(), user_id, body.profile_data).model_dump(mode="json")
    )


@route("/profile", "PUT")
@contract({200: profiles.ProfileView}, body=ProfileBody)
def update_profile() -> Response:
    """`{profile_data}`: replace the document of the caller's profile (404 if none)."""
    user_id = get_principal().require_user()
    body = parse_body(ProfileBody)
    return jsonify(
        profiles.update_profile(get_db(), user_id, body.profile_data).model_dump(mode="json")
    )


@route("/profile", "DELETE")
@contract({200: MessageView})
def delete_profile() -> Response:
    """Delete the caller's profile (404 if none)."""
    profiles.delete_profile(get_db(), get_principal().require_user())
    return jsonify({"message": "Profile deleted."})


@route("/tokens", "GET")
@contract({200: TokenBalance})
def tokens() -> Response:
    """`{user_id, token, updated_at}`: the caller's balance."""
    found = accounts.account(get_db(), get_principal().require_user())
    view = TokenBalance(
        user_id=found.user_id, token=found.credit_balance, updated_at=found.updated_at
    )
    return jsonify(view.model_dump(mode="json"))


@route("/tokens/deduct", "POST")
@contract({200: TokensChanged}, body=TokenAmount)
def deduct_tokens() -> Response:
    """`{amount}`: take tokens from the caller's balance, never below zero (403
    INSUFFICIENT_CREDITS, nothing taken)."""
    user_id = get_principal().require_user()
    body = parse_body(TokenAmount)
    move = ledger.deduct_credits(
        get_db(),
        user_id,
        body.amount,
        kind="usage",
        description="Deducted through POST /api/v1/tokens/deduct",
        endpoint="api:v1/tokens/deduct",
    )
    if not move.applied:
        raise InsufficientCredits(
            f"Deducting {body.amount} token(s) needs more than your balance of {move.balance}.",
            required=body.amount,
            balance=move.balance,
        )
    view = TokensChanged(
        user_id=user_id,
        token=move.balance,
        deducted=body.amount,
        message=f"Deducted {body.amount} tokens.",
    )
    return jsonify(view.model_dump(mode="json", exclude_none=True))


def is_admin(principal: Principal) -> bool:
    """An admin by token claim or by the user_roles table."""
    return principal.is_admin or (
        principal.user_id is not None and has_admin_role(get_db(), principal.user_id)
    )


def claim(principal: Principal, body: AddTokens, session_id: str) -> TokensChanged:
    """Grant a paid checkout session once: a user's own; an admin's or service's for its buyer."""
    if principal.is_service:
        principal.require_scope(CREDITS_WRITE_SCOPE)
        buyer = body.user_id
    elif is_admin(principal):
        buyer = body.user_id
    else:
        buyer = principal.require_user()
        if body.user_id not in (None, buyer):
            raise Forbidden("Users add tokens to their own balance only.")
    settings = get_settings()
    done = claim_credit_pack(
        get_db(),
        settings,
        client_for(settings),
        session_id=session_id,
        buyer=buyer,
        amount=body.amount,
    )
    message = (
        f"Added {done.credits} tokens bought with checkout session {session_id}."
        if done.granted
        else f"Checkout session {session_id}'s {done.credits} tokens were already added."
    )
    return TokensChanged(
        user_id=done.user_id,
        token=done.balance,
        added=done.credits if done.granted else 0,
        checkout_session_id=session_id,
        message=message,
    )


def service_add(principal: Principal, body: AddTokens) -> TokensChanged:
    """A backend (scope credits:write) adds tokens to a named user, audited."""
    principal.require_scope(CREDITS_WRITE_SCOPE)
    if body.user_id is None:
        raise InvalidInput("A service token must name the user: send user_id.")
    db = get_db()
    accounts.require_known_user(db, body.user_id)
    move = ledger.add_credits(
        db,
        body.user_id,
        body.amount,
        kind="adjustment",
        description=f"Added by {principal.subject}",
    )
    audit_request(
        db,
        action="service.credits.add",
        outcome="success",
        subject=str(body.user_id),
        details={"service": principal.subject, "amount": body.amount, "new_balance": move.balance},
    )
    return TokensChanged(
        user_id=body.user_id,
        token=move.balance,
        added=body.amount,
        message=f"Added {body.amount} tokens.",
    )


@route("/tokens/add", "POST")
@contract({200: TokensChanged}, body=AddTokens)
def add_tokens() -> Response:
    """`{amount, checkout_session_id?, user_id?}`: add tokens after a purchase.

    A user names the paid Stripe checkout session of a credit pack they bought; it is granted
    once, whether this call or the payment's webhook comes first (a repeat adds 0). Admins add
    to themselves or `user_id` (audited); a service token with scope `credits:write` adds to
    `user_id`. Anything else is 403 PURCHASE_REQUIRED: a user never adds tokens by asking."""
    principal = get_principal()
    body = parse_body(AddTokens)
    if body.checkout_session_id is not None:
        changed = claim(principal, body, body.checkout_session_id)
    elif principal.is_service:
        changed = service_add(principal, body)
    elif is_admin(principal):
        target = body.user_id or principal.require_user()
        if target != principal.user_id:
            accounts.require_known_user(get_db(), target)
        balance = admin_add(principal, target, body.amount)
        changed = TokensChanged(
            user_id=target, token=balance, added=body.amount, message=f"Added {body.amount} tokens."
        )
    else:
        raise PurchaseRequired(HOW_TO_BUY)
    return jsonify(changed.model_dump(mode="json", exclude_none=True))
