"""Forgetting a user: every Conveyor row of theirs deleted in one transaction by
`conveyor.forget_user` (sql/20261207001200_user_erasure.sql), which decides what goes and what
is kept."""

from __future__ import annotations

from uuid import UUID

from conveyor.db import Database

# The trigger function the host attaches to auth.users; Conveyor never creates the trigger.
TRIGGER_FUNCTION = "conveyor.forget_deleted_auth_user"
# What the host runs once, as postgres, so deleting a user in Supabase Auth forgets them here.
TRIGGER_SQL = (
    "create trigger conveyor_forget_deleted_user after delete on auth.users "
    f"for each row execute function {TRIGGER_FUNCTION}();"
)


def forget_user(db: Database, user_id: UUID) -> dict[str, int]:
    """Delete every Conveyor row of user_id; rows per table, by table name (`usage_batch_events`
    counts events taken out of waiting batches, `audit_logs_anonymized` entries kept without
    the actor)."""
    with db.transaction() as conn:
        row = conn.execute("select forget_user(%s) as counts", (user_id,)).fetchone()
    assert row is not None
    return {name: int(count) for name, count in sorted(row["counts"].items())}
