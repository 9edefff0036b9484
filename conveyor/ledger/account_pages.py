"""Accounts and credit movements in the Django + Supabase template's shapes (seed 003): a user
with a `profile` (plan and balance), and movements naming their user, paged by limit and offset.

A Conveyor user is a Supabase Auth user, so every id here is the Supabase UUID (the template's own
integer ids have no equivalent)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from conveyor.db import Database

# Accounts with the email Supabase Auth has for them (none for users it does not know).
LIST_USERS = """
select a.user_id, u.email, a.plan_id, a.credit_balance, a.created_at, a.updated_at
  from user_accounts a left join auth.users u on u.id = a.user_id
 order by a.created_at, a.user_id limit %s offset %s
"""
ONE_USER = """
select a.user_id, u.email, a.plan_id, a.credit_balance, a.created_at, a.updated_at
  from user_accounts a left join auth.users u on u.id = a.user_id
 where a.user_id = %s
"""


class ProfileView(BaseModel):
    """The template's UserProfile: the plan (`subscription_tier`) and the credit balance."""

    supabase_uid: UUID
    subscription_tier: str
    credits_balance: int
    created_at: datetime
    updated_at: datetime


class UserView(BaseModel):
    """A user with their profile; `id` and `username` are the Supabase user id."""

    id: UUID
    username: str
    email: str | None
    profile: ProfileView


class TransactionView(BaseModel):
    """One credit movement (positive adds, negative takes); `username` is the user's id."""

    id: int
    username: str
    amount: int
    balance_after: int
    description: str | None
    endpoint: str | None
    created_at: datetime
    kind: str
    reference: str | None


def user_view(row: dict[str, Any], email: str | None = None) -> UserView:
    """The UserView of an account row (its email from Supabase Auth, else the one given)."""
    return UserView(
        id=row["user_id"],
        username=str(row["user_id"]),
        email=row["email"] or email,
        profile=ProfileView(
            supabase_uid=row["user_id"],
            subscription_tier=row["plan_id"],
            credits_balance=row["credit_balance"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        ),
    )


def list_users(db: Database, *, limit: int, offset: int) -> list[UserView]:
    """Every account, oldest first (admins only: the caller checks)."""
    with db.connection() as conn:
        rows = conn.execute(LIST_USERS, (limit, offset)).fetchall()
    return [user_view(row) for row in rows]


def own_user(db: Database, user_id: UUID, email: str | None) -> UserView:
    """The caller with their account, created (free plan, this month's credits) on first use."""
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        row = conn.execute(ONE_USER, (user_id,)).fetchone()
    assert row is not None
    return user_view(row, email)


def list_transactions(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, offset: int
) -> list[TransactionView]:
    """The user's credit movements under RLS, newest first."""
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            "select id, user_id::text as username, amount, balance_after, description, endpoint,"
            " created_at, kind, reference from credit_transactions where user_id = %s"
            " order by created_at desc, id desc limit %s offset %s",
            (user_id, limit, offset),
        ).fetchall()
    return [TransactionView.model_validate(row) for row in rows]
