"""One JSON document per user (`conveyor.profiles`): read by its owner under RLS, written by the
service role for the verified user only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from conveyor.db import Database
from conveyor.errors import NotFound


class ProfileNotFound(NotFound):
    """You have no profile yet; create it with POST."""

    code = "PROFILE_NOT_FOUND"


class ProfileView(BaseModel):
    """A stored profile."""

    id: UUID
    user_id: UUID
    profile_data: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def get_profile(db: Database, claims: dict[str, Any], user_id: UUID) -> ProfileView:
    """The user's profile, read as the caller under RLS; ProfileNotFound if there is none."""
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            "select id, user_id, profile_data, created_at, updated_at from profiles "
            "where user_id = %s",
            (user_id,),
        ).fetchone()
    if row is None:
        raise ProfileNotFound()
    return ProfileView.model_validate(row)


def upsert_profile(db: Database, user_id: UUID, data: dict[str, Any]) -> ProfileView:
    """Create the user's profile, or replace its document if it exists."""
    with db.transaction() as conn:
        row = conn.execute(
            "insert into profiles (user_id, profile_data) values (%s, %s) "
            "on conflict (user_id) do update "
            "set profile_data = excluded.profile_data, updated_at = now() "
            "returning id, user_id, profile_data, created_at, updated_at",
            (user_id, Jsonb(data)),
        ).fetchone()
    return ProfileView.model_validate(row)


def update_profile(db: Database, user_id: UUID, data: dict[str, Any]) -> ProfileView:
    """Replace the document of the user's existing profile; ProfileNotFound if there is none."""
    with db.transaction() as conn:
        row = conn.execute(
            "update profiles set profile_data = %s, updated_at = now() where user_id = %s "
            "returning id, user_id, profile_data, created_at, updated_at",
            (Jsonb(data), user_id),
        ).fetchone()
    if row is None:
        raise ProfileNotFound()
    return ProfileView.model_validate(row)


def delete_profile(db: Database, user_id: UUID) -> None:
    """Delete the user's profile; ProfileNotFound if there is none."""
    with db.transaction() as conn:
        deleted = conn.execute("delete from profiles where user_id = %s", (user_id,)).rowcount
    if deleted == 0:
        raise ProfileNotFound()
