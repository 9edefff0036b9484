"""Agent sessions (threads): create, read and list them, and append gap-free numbered messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from conveyor.db import Connection, Database
from conveyor.errors import SessionNotFound
from conveyor.pagination import Listing, user_page
from conveyor.payload import Payload

MessageRole = Literal["user", "assistant", "system", "tool"]

SESSION_COLUMNS = (
    "id, user_id, agent_mode, project_name, project_path, last_sequence_number, "
    "created_at, updated_at"
)
MESSAGE_COLUMNS = "id, session_id, sequence_number, role, content, run_id, metadata, created_at"


class SessionCreate(Payload):
    """`POST /api/agent/sessions`: start a session for one agent mode, optionally on a project."""

    agent_mode: str = Field(min_length=1, max_length=100)
    project_name: str | None = Field(default=None, max_length=200)
    project_path: str | None = Field(default=None, max_length=1000)


class MessageCreate(Payload):
    """`POST /api/agent/sessions/<id>/messages`: one message to append."""

    # Content is stored verbatim: leading indentation and trailing newlines can matter (code).
    model_config = ConfigDict(str_strip_whitespace=False)

    role: MessageRole
    content: str = Field(min_length=1, max_length=100_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class MessageListQuery(Payload):
    """`GET /api/agent/sessions/<id>/messages` query parameters: messages after `since`."""

    since: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=500)


class SessionView(BaseModel):
    """A session as its owner sees it; `last_sequence_number` is the newest message's number."""

    id: UUID
    user_id: UUID
    agent_mode: str
    project_name: str | None
    project_path: str | None
    last_sequence_number: int
    created_at: datetime
    updated_at: datetime


class MessageView(BaseModel):
    """One message of a session."""

    id: UUID
    session_id: UUID
    sequence_number: int
    role: MessageRole
    content: str
    run_id: UUID | None
    metadata: dict[str, Any]
    created_at: datetime


def parse_session_id(raw: UUID | str) -> UUID:
    """A session id from a URL or a caller; anything that is not a UUID cannot name a session."""
    if isinstance(raw, UUID):
        return raw
    try:
        return UUID(raw)
    except ValueError:
        raise SessionNotFound(f"session {raw!r} does not exist") from None


def create_session(db: Database, user_id: UUID, body: SessionCreate) -> SessionView:
    """Insert an empty session owned by user_id."""
    with db.transaction() as conn:
        row = conn.execute(
            f"""
            insert into agent_sessions (user_id, agent_mode, project_name, project_path)
            values (%s, %s, %s, %s)
            returning {SESSION_COLUMNS}
            """,  # noqa: S608 - the column list is a constant
            (user_id, body.agent_mode, body.project_name, body.project_path),
        ).fetchone()
    return SessionView.model_validate(row)


def get_session(db: Database, claims: dict[str, Any], session_id: UUID | str) -> SessionView:
    """A session under RLS; someone else's is not found, exactly like a missing one."""
    target = parse_session_id(session_id)
    with db.user_transaction(claims) as conn:
        row = conn.execute(
            f"select {SESSION_COLUMNS} from agent_sessions where id = %s",  # noqa: S608
            (target,),
        ).fetchone()
    if row is None:
        raise SessionNotFound(f"session {target} does not exist")
    return SessionView.model_validate(row)


SESSIONS = Listing(
    table="agent_sessions",
    columns=SESSION_COLUMNS,
    time_column="created_at",
    id_type="uuid",
    where="user_id = %(user)s",
)


def list_sessions(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[SessionView], str | None]:
    """A user's sessions under RLS, newest first, keyset-paginated; no cursor at the end."""
    return user_page(
        db,
        claims,
        SESSIONS,
        SessionView.model_validate,
        params={"user": user_id},
        limit=limit,
        cursor=cursor,
    )


def append_message(
    conn: Connection,
    session_id: UUID | str,
    *,
    role: MessageRole,
    content: str,
    run_id: UUID | None = None,
    metadata: dict[str, Any] | None = None,
) -> MessageView:
    """Append a message inside the caller's transaction (service role); it commits or rolls back
    with that transaction, number included."""
    target = parse_session_id(session_id)
    # The update locks the session row until the caller commits, so concurrent appends take
    # numbers one after another; a rollback returns the number, so the sequence has no gaps.
    counter = conn.execute(
        """
        update agent_sessions
           set last_sequence_number = last_sequence_number + 1, updated_at = now()
         where id = %s
        returning last_sequence_number
        """,
        (target,),
    ).fetchone()
    if counter is None:
        raise SessionNotFound(f"session {target} does not exist")
    row = conn.execute(
        f"""
        insert into agent_messages
          (session_id, sequence_number, role, content, run_id, metadata)
        values (%s, %s, %s, %s, %s, %s)
        returning {MESSAGE_COLUMNS}
        """,  # noqa: S608 - the column list is a constant
        (target, counter["last_sequence_number"], role, content, run_id, Jsonb(metadata or {})),
    ).fetchone()
    return MessageView.model_validate(row)


def require_visible(db: Database, claims: dict[str, Any], session_id: UUID) -> None:
    """SessionNotFound unless RLS lets the caller see the session (owner or admin)."""
    with db.user_transaction(claims) as conn:
        found = conn.execute("select 1 from agent_sessions where id = %s", (session_id,)).fetchone()
    if found is None:
        raise SessionNotFound(f"session {session_id} does not exist")


def add_message(
    db: Database, claims: dict[str, Any], session_id: UUID | str, body: MessageCreate
) -> MessageView:
    """The HTTP path: append a message to a session the caller may see (owner or admin)."""
    target = parse_session_id(session_id)
    require_visible(db, claims, target)
    # Users have no write grants under RLS, so the append itself runs as the service role.
    with db.transaction() as conn:
        return append_message(
            conn, target, role=body.role, content=body.content, metadata=body.metadata
        )


def list_messages(
    db: Database, claims: dict[str, Any], session_id: UUID | str, *, since: int = 0, limit: int
) -> list[MessageView]:
    """Messages numbered after `since`, oldest first, under RLS; an unseen session is not found."""
    target = parse_session_id(session_id)
    with db.user_transaction(claims) as conn:
        # Checked in the same transaction so "not yours" is a 404, not an empty list.
        if conn.execute("select 1 from agent_sessions where id = %s", (target,)).fetchone() is None:
            raise SessionNotFound(f"session {target} does not exist")
        rows = conn.execute(
            f"""
            select {MESSAGE_COLUMNS}
              from agent_messages
             where session_id = %s and sequence_number > %s
             order by sequence_number
             limit %s
            """,  # noqa: S608 - the column list is a constant
            (target, since, limit),
        ).fetchall()
    return [MessageView.model_validate(row) for row in rows]


def require_session_owner(db: Database, user_id: UUID, session_id: UUID | str) -> None:
    """SessionNotFound unless user_id owns the session; being an admin is not enough here."""
    target = parse_session_id(session_id)
    with db.transaction() as conn:
        found = conn.execute(
            "select 1 from agent_sessions where id = %s and user_id = %s",
            (target, user_id),
        ).fetchone()
    if found is None:
        raise SessionNotFound(f"session {target} does not exist")
