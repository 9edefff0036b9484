"""Session messages that carry an AI request's figures (Witchcraft's `POST /api/agent/message`):
the message and its usage in one transaction, each once. The figures are recorded as a usage
event keyed by the message, unless `ai_request_id` names the event they were already recorded as
(by `POST /api/ai/track-usage`); an idempotency key makes a retried message the same message."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from hashlib import sha256
from typing import Any
from uuid import UUID

import psycopg
from pydantic import computed_field

from conveyor.db import Connection, Database
from conveyor.errors import IdempotencyKeyReused, NotFound, SessionNotFound
from conveyor.events.notifications import Notification
from conveyor.ledger import UsageRecord, record_usage
from conveyor.ledger.micro_usd import micro_usd_to_usd
from conveyor.ledger.usage import announce_quota_threshold
from conveyor.runs.sessions import MESSAGE_COLUMNS, MessageRole, MessageView, append_message

KEY_INDEX = "agent_messages_session_idempotency_key"
FIGURE_COLUMNS = "tokens, cost_micro_usd, ai_request_id, usage_event_id, idempotency_key"
# Usage needs a provider and a model; a message that names neither is recorded under these.
UNSPECIFIED = "unspecified"


class AiRequestNotFound(NotFound):
    """That AI request (a usage event's id, track-usage's requestId) does not exist or is not
    yours."""

    code = "AI_REQUEST_NOT_FOUND"


@dataclass(frozen=True)
class MessageFigures:
    """What a message says about the AI request behind it."""

    tokens: int | None = None
    cost_micro_usd: int | None = None
    ai_request_id: int | None = None
    provider: str | None = None
    model: str | None = None

    @property
    def to_record(self) -> bool:
        """Whether the figures are usage of their own: sent, and not an already tracked request."""
        return self.ai_request_id is None and (
            self.tokens is not None or self.cost_micro_usd is not None
        )


class FiguredMessageView(MessageView):
    """A message with its session's owner and its AI figures (Witchcraft's agent_messages row)."""

    user_id: UUID
    tokens: int | None
    cost_micro_usd: int | None
    ai_request_id: int | None
    usage_event_id: int | None
    idempotency_key: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost_usd(self) -> float | None:
        """The cost in USD, as Witchcraft's `cost_usd` column held it."""
        return None if self.cost_micro_usd is None else micro_usd_to_usd(self.cost_micro_usd)


@dataclass(frozen=True)
class MessageAdded:
    """The message (the first one for a repeated key), whether this call repeated it, and the
    notifications to publish after commit."""

    message: FiguredMessageView
    duplicate: bool
    notifications: tuple[Notification, ...] = ()


def _figured(conn: Connection, user_id: UUID, message_id: UUID) -> FiguredMessageView:
    row = conn.execute(
        f"select {MESSAGE_COLUMNS}, {FIGURE_COLUMNS} from agent_messages where id = %s",  # noqa: S608
        (message_id,),
    ).fetchone()
    return FiguredMessageView.model_validate({**(row or {}), "user_id": user_id})


def _usage(
    conn: Connection,
    user_id: UUID,
    session: dict[str, Any],
    role: MessageRole,
    figures: MessageFigures,
    key: str,
) -> tuple[int, Notification | None]:
    """Record the message's own figures once (keyed by its session and key): an assistant's as
    completion tokens and output cost, anyone else's as prompt tokens and input cost."""
    tokens, cost = figures.tokens or 0, figures.cost_micro_usd
    answer = role == "assistant"
    recorded = record_usage(
        conn,
        user_id,
        UsageRecord(
            # The client's key (up to 255 characters) hashed: prefixed, it would outgrow the
            # usage key's 255.
            idempotency_key=f"agent-message:{session['id']}:{sha256(key.encode()).hexdigest()}",
            provider=figures.provider or UNSPECIFIED,
            model=figures.model or UNSPECIFIED,
            prompt_tokens=0 if answer else tokens,
            completion_tokens=tokens if answer else 0,
            # No cost sent: priced from model_prices, as the ledger prices any unpriced usage.
            input_cost_micro_usd=None if cost is None else (0 if answer else cost),
            output_cost_micro_usd=None if cost is None else (cost if answer else 0),
            agent_mode=session["agent_mode"],
            session_id=session["id"],
        ),
    )
    percent = recorded.threshold_crossed
    note = announce_quota_threshold(conn, user_id, percent) if percent else None
    return recorded.event_id, note


def _first(
    conn: Connection,
    user_id: UUID,
    session_id: UUID,
    key: str,
    sent: tuple[MessageRole, str, MessageFigures],
) -> FiguredMessageView | None:
    """The message sent before under key, if any; IdempotencyKeyReused if it is another one."""
    found = conn.execute(
        "select id from agent_messages where session_id = %s and idempotency_key = %s",
        (session_id, key),
    ).fetchone()
    if found is None:
        return None
    first = _figured(conn, user_id, found["id"])
    role, content, figures = sent
    if (first.role, first.content, first.tokens, first.cost_micro_usd, first.ai_request_id) != (
        role,
        content,
        figures.tokens,
        figures.cost_micro_usd,
        figures.ai_request_id,
    ):
        raise IdempotencyKeyReused("That idempotency key was already used for a different message.")
    return first


def add_figured_message(
    db: Database,
    user_id: UUID,
    session_id: UUID,
    *,
    role: MessageRole,
    content: str,
    figures: MessageFigures,
    idempotency_key: str | None = None,
) -> MessageAdded:
    """Append a message to the user's own session with its figures, recording them as usage once;
    a repeated idempotency key answers the first message (IdempotencyKeyReused if it differs)."""
    sent = (role, content, figures)
    try:
        with db.transaction() as conn:
            session = conn.execute(
                "select id, agent_mode from agent_sessions where id = %s and user_id = %s",
                (session_id, user_id),
            ).fetchone()
            if session is None:
                raise SessionNotFound(f"session {session_id} does not exist")
            if idempotency_key is not None:
                first = _first(conn, user_id, session_id, idempotency_key, sent)
                if first is not None:
                    return MessageAdded(message=first, duplicate=True)
            if (
                figures.ai_request_id is not None
                and not conn.execute(
                    "select 1 from usage_events where id = %s and user_id = %s",
                    (figures.ai_request_id, user_id),
                ).fetchone()
            ):
                raise AiRequestNotFound(f"AI request {figures.ai_request_id} does not exist")
            event_id, note = None, None
            # Usage before the message: the ledger's locks, then the session row's, the order
            # finish_run takes them in (a run's last step, then its reply to the session).
            if figures.to_record:
                key = idempotency_key or str(uuid.uuid4())
                event_id, note = _usage(conn, user_id, session, role, figures, key)
            message = append_message(conn, session_id, role=role, content=content)
            conn.execute(
                """
                update agent_messages
                   set tokens = %s, cost_micro_usd = %s, ai_request_id = %s, usage_event_id = %s,
                       idempotency_key = %s
                 where id = %s
                """,
                (
                    figures.tokens,
                    figures.cost_micro_usd,
                    figures.ai_request_id,
                    event_id,
                    idempotency_key,
                    message.id,
                ),
            )
            view = _figured(conn, user_id, message.id)
    except psycopg.errors.UniqueViolation as exc:
        # The same key sent twice at once: the other request's message won; this one rolled back.
        if idempotency_key is None or exc.diag.constraint_name != KEY_INDEX:
            raise
        with db.transaction() as conn:
            first = _first(conn, user_id, session_id, idempotency_key, sent)
        assert first is not None
        return MessageAdded(message=first, duplicate=True)
    return MessageAdded(
        message=view, duplicate=False, notifications=(note,) if note is not None else ()
    )
