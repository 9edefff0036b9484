"""`conveyor users forget USER_ID`: delete every Conveyor row of a user, as deleting them in
Supabase Auth does once the host's trigger is in place (docs/operations.md)."""

from __future__ import annotations

import uuid

import click

from conveyor.cli.backing import migrated_database
from conveyor.db import Database
from conveyor.errors import BadRequest
from conveyor.ops import erasure
from conveyor.settings import get_settings


def parse_user_id(text: str) -> uuid.UUID:
    """The user id on the command line, or BadRequest (one line, exit 2, through cli's group)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequest(
            f"{text!r} is not a user id: expected a UUID, e.g. {uuid.UUID(int=0)}"
        ) from None


def report(user_id: uuid.UUID, counts: dict[str, int]) -> list[str]:
    """What forgetting did, one line per table it changed."""
    changed = {name: count for name, count in counts.items() if count}
    if not changed:
        return [f"forgot user {user_id}: nothing of theirs was stored"]
    return [f"forgot user {user_id}:"] + [f"  {name}: {count}" for name, count in changed.items()]


@click.group("users")
def users() -> None:
    """Users' data in Conveyor."""


@users.command("forget")
@click.argument("user_id")
def forget(user_id: str) -> None:
    """Delete every Conveyor row of USER_ID (runs, usage, credits, notifications, webhooks…);
    a worker running one of their runs stops at its next check-in. Safe to repeat."""
    user = parse_user_id(user_id)
    with migrated_database(get_settings()) as url:
        db = Database(url, min_size=0, max_size=1)
        try:
            counts = erasure.forget_user(db, user)
        finally:
            db.close()
    click.echo("\n".join(report(user, counts)))
