"""Session messages in Postgres: appends share the caller's transaction, numbers are gap-free."""

from __future__ import annotations

import uuid

import pytest

from conveyor.db import Database
from conveyor.errors import SessionNotFound
from conveyor.runs import sessions


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture
def owner() -> uuid.UUID:
    return uuid.uuid4()


@pytest.fixture
def session_id(db: Database, owner: uuid.UUID) -> uuid.UUID:
    view = sessions.create_session(db, owner, sessions.SessionCreate(agent_mode="chat"))
    return view.id


def claims(user: uuid.UUID) -> dict[str, str]:
    return {"sub": str(user), "role": "authenticated"}


def append_then_abort(db: Database, session_id: uuid.UUID) -> None:
    """Append inside a transaction, then fail it, carrying the number the append was given."""
    with db.transaction() as conn:
        doomed = sessions.append_message(conn, session_id, role="assistant", content="lost")
        raise Abort(doomed.sequence_number)


def test_a_rolled_back_append_leaves_no_message_and_no_used_number(
    db: Database, owner: uuid.UUID, session_id: uuid.UUID
) -> None:
    """An append undone with its caller's transaction stores nothing and frees its number."""
    with db.transaction() as conn:
        sessions.append_message(conn, session_id, role="user", content="kept")
    with pytest.raises(Abort) as aborted:
        append_then_abort(db, session_id)
    assert aborted.value.args == (2,)
    with db.transaction() as conn:
        after = sessions.append_message(
            conn, session_id, role="assistant", content="next", run_id=uuid.uuid4()
        )

    assert after.sequence_number == 2
    listed = sessions.list_messages(db, claims(owner), session_id, limit=10)
    assert [(m.sequence_number, m.content) for m in listed] == [(1, "kept"), (2, "next")]


def test_appending_to_a_missing_session_is_session_not_found(db: Database) -> None:
    """append_message refuses a session that does not exist."""
    with pytest.raises(SessionNotFound), db.transaction() as conn:
        sessions.append_message(conn, uuid.uuid4(), role="user", content="hi")


def test_only_the_owner_passes_require_session_owner(
    db: Database, owner: uuid.UUID, session_id: uuid.UUID
) -> None:
    """The run-submit check accepts the owner and refuses anyone else as not found."""
    sessions.require_session_owner(db, owner, session_id)
    with pytest.raises(SessionNotFound):
        sessions.require_session_owner(db, uuid.uuid4(), session_id)
