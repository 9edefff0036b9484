"""Tenancy, admin roles and the audit trail."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor.db import Database


def personal_tenant(db: Database, user_id: UUID) -> UUID:
    """The user's first tenant; a first-time user gets one personal tenant, even concurrently."""
    with db.transaction() as conn:
        row = conn.execute(
            "select tenant_id from tenant_members where user_id = %s "
            "order by created_at, tenant_id limit 1",
            (user_id,),
        ).fetchone()
        if row is not None:
            tenant_id: UUID = row["tenant_id"]
            return tenant_id
        conn.execute(
            "insert into tenants (name, personal_owner) values ('Personal', %s) "
            "on conflict (personal_owner) do nothing",
            (user_id,),
        )
        tenant = conn.execute(
            "select id from tenants where personal_owner = %s", (user_id,)
        ).fetchone()
        assert tenant is not None
        conn.execute(
            "insert into tenant_members (tenant_id, user_id, role) values (%s, %s, 'owner') "
            "on conflict do nothing",
            (tenant["id"], user_id),
        )
        personal: UUID = tenant["id"]
        return personal


def has_admin_role(db: Database, user_id: UUID) -> bool:
    """True when user_roles makes the user an admin."""
    with db.transaction() as conn:
        row = conn.execute(
            "select 1 from user_roles where user_id = %s and role = 'admin'", (user_id,)
        ).fetchone()
    return row is not None


def grant_admin(db: Database, user_id: UUID) -> None:
    """Make a user an admin (idempotent)."""
    with db.transaction() as conn:
        conn.execute(
            "insert into user_roles (user_id, role) values (%s, 'admin') on conflict do nothing",
            (user_id,),
        )


def record_audit(
    db: Database,
    *,
    action: str,
    outcome: Literal["success", "failure"],
    actor_user_id: UUID | None = None,
    subject: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one audit entry (authentication on the exchange endpoint, admin actions)."""
    with db.transaction() as conn:
        conn.execute(
            "insert into audit_logs "
            "(action, outcome, actor_user_id, subject, ip, user_agent, details) "
            "values (%s, %s, %s, %s, %s, %s, %s)",
            (
                action,
                outcome,
                actor_user_id,
                subject,
                ip,
                (user_agent or "")[:1000] or None,
                Jsonb(details or {}),
            ),
        )


def audit_entries(
    db: Database, *, limit: int, before_id: int | None = None
) -> list[dict[str, Any]]:
    """The newest audit entries, for admins."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select id, occurred_at, actor_user_id, action, outcome, subject, host(ip) as ip, "
            "user_agent, details from audit_logs "
            "where (%s::bigint is null or id < %s) order by id desc limit %s",
            (before_id, before_id, limit),
        ).fetchall()
    return [dict(row) for row in rows]
