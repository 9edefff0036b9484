"""Seed 003's user management: accounts with their `profile` (plan and credits), the admin
top-up (the native `admin_add`), and Supabase Auth's user list through its admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict, Field, RootModel

from conveyor.ledger import account_pages, accounts
from conveyor.ledger.balances import MAX_CREDITS
from web.auth import require_admin
from web.body import parse_body, parse_query
from web.compat.django_common import MAX_LIMIT, ArrayQuery, DjangoBody, array, next_link
from web.context import get_db, get_principal, get_supabase_auth
from web.credits import admin_add
from web.openapi import contract

bp = Blueprint("django_users", __name__)


class UserList(RootModel[list[account_pages.UserView]]):
    """A page of users, oldest account first."""


class AddCredits(DjangoBody):
    """`{amount}`: a whole number of credits > 0 (never coerced from "5" or 5.0)."""

    amount: int = Field(strict=True, gt=0, le=MAX_CREDITS)


class CreditsAdded(BaseModel):
    """The top-up's confirmation and the user's new balance."""

    message: str
    new_balance: int


class SupabaseUsersQuery(BaseModel):
    """`?page=&per_page=`: Supabase Auth's own paging of its users (50 a page by default)."""

    model_config = ConfigDict(extra="ignore")

    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=50, ge=1, le=MAX_LIMIT)


class SupabaseUserView(BaseModel):
    """A user as Supabase Auth lists them."""

    id: UUID
    email: str | None
    app_metadata: dict[str, Any]
    user_metadata: dict[str, Any]
    created_at: datetime
    aud: str
    email_confirmed_at: datetime | None
    last_sign_in_at: datetime | None
    banned_until: datetime | None


class SupabaseUserList(RootModel[list[SupabaseUserView]]):
    """A page of Supabase Auth's users."""


@bp.get("/api/users/")
@contract({200: UserList}, query=ArrayQuery, auth="admin")
def list_users() -> Response:
    """Admins only: every account with its profile, `?limit=` (100 by default, at most 1,000)
    `&offset=`; a full page has a `Link` to the next."""
    require_admin()
    query = parse_query(ArrayQuery)
    return array(account_pages.list_users(get_db(), limit=query.limit, offset=query.offset), query)


@bp.get("/api/users/me/")
@contract({200: account_pages.UserView})
def me() -> Response:
    """The caller with their profile (an account is opened on first use)."""
    principal = get_principal()
    found = account_pages.own_user(get_db(), principal.require_user(), principal.email)
    return jsonify(found.model_dump(mode="json"))


@bp.post("/api/users/<user_id>/add_credits/")
@contract({200: CreditsAdded}, body=AddCredits, auth="admin")
def add_credits(user_id: str) -> Response:
    """Admins only: `{amount}` → `{message, new_balance}`, audited. The user must have an account
    or exist in Supabase Auth (400 UNKNOWN_USER)."""
    admin = require_admin()
    target = accounts.parse_user_id(user_id)
    body = parse_body(AddCredits)
    accounts.require_known_user(get_db(), target)
    new_balance = admin_add(admin, target, body.amount)
    view = CreditsAdded(
        message=f"Added {body.amount} credits to {target}'s account", new_balance=new_balance
    )
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/users/supabase_users/")
@contract({200: SupabaseUserList}, query=SupabaseUsersQuery, auth="admin")
def supabase_users() -> Response:
    """Admins only: Supabase Auth's users through its admin API (needs
    SUPABASE_SERVICE_ROLE_KEY), `?page=&per_page=`; a full page has a `Link` to the next."""
    require_admin()
    auth = get_supabase_auth()
    query = parse_query(SupabaseUsersQuery)
    users = auth.list_users(page=query.page, per_page=query.per_page)
    response = jsonify(
        [SupabaseUserView.model_validate(u.model_dump()).model_dump(mode="json") for u in users]
    )
    if len(users) == query.per_page:
        response.headers["Link"] = next_link(page=query.page + 1, per_page=query.per_page)
    return response
