"""Seed 000's `POST /api/agent/session` and `POST /api/agent/message`: Conveyor's agent sessions
(`/api/agent/sessions`) answering Witchcraft's row shapes; a message's tokens and cost are
recorded as usage once."""

from __future__ import annotations

from uuid import UUID

from flask import Response, jsonify
from pydantic import Field, ValidationError

from conveyor.errors import InvalidInput
from conveyor.events.notifications import publish_notifications
from conveyor.ledger.balances import MAX_TOKENS
from conveyor.ledger.micro_usd import UsdAsMicroUsd
from conveyor.runs import sessions
from conveyor.runs.session_usage import FiguredMessageView, MessageFigures, add_figured_message
from web.body import IDEMPOTENCY_HEADER
from web.compat.witchcraft_common import (
    WitchcraftBody,
    acting_user,
    client_key,
    parse_witchcraft_body,
    post,
)
from web.compat.witchcraft_usage import REPLAYED_HEADER
from web.context import get_db, get_principal, get_publisher
from web.openapi import contract


class SessionBody(WitchcraftBody):
    """createAgentSession's parameters."""

    user_id: UUID | None = None
    agent_mode: str = Field(min_length=1, max_length=100)
    project_path: str | None = Field(default=None, max_length=1000)
    project_name: str | None = Field(default=None, max_length=200)


class MessageBody(WitchcraftBody):
    """addMessage's parameters: the message, and the AI request behind it (`aiRequestId`, a
    track-usage `requestId`, or its `tokens` and `costUsd`; `provider` and `model` name it)."""

    session_id: UUID
    user_id: UUID | None = None
    role: sessions.MessageRole
    content: str = Field(min_length=1, max_length=100_000)
    ai_request_id: int | None = Field(default=None, strict=True, ge=1, le=2**63 - 1)
    tokens: int | None = Field(default=None, strict=True, ge=0, le=MAX_TOKENS)
    cost_usd: UsdAsMicroUsd | None = None
    provider: str | None = Field(default=None, min_length=1, max_length=100)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    idempotency_key: str | None = None


@post("/api/agent/session")
@contract({200: sessions.SessionView}, body=SessionBody)
def create_session() -> Response:
    """Start a session owned by the caller: the new row `{id, user_id, agent_mode, project_path,
    project_name, ...}` (the same as `POST /api/agent/sessions`, answered 200 as Express does)."""
    body = parse_witchcraft_body(SessionBody)
    user_id = acting_user(get_principal(), body.user_id, service_scope=None)
    try:  # the native model also strips whitespace, so "  " is refused there, not here
        create = sessions.SessionCreate.model_validate(
            body.model_dump(include={"agent_mode", "project_path", "project_name"})
        )
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "request body") from exc
    return jsonify(sessions.create_session(get_db(), user_id, create).model_dump(mode="json"))


@post("/api/agent/message")
@contract(
    {200: FiguredMessageView},
    body=MessageBody,
    headers={IDEMPOTENCY_HEADER: "A retry with the same key answers the first message."},
)
def add_message() -> tuple[Response, int, dict[str, str]]:
    """Append a message to one of the caller's sessions with the next `sequence_number`; its
    `tokens` and `costUsd` are recorded as usage once, unless `aiRequestId` names the request
    track-usage recorded them as."""
    body = parse_witchcraft_body(MessageBody)
    user_id = acting_user(get_principal(), body.user_id, service_scope=None)
    added = add_figured_message(
        get_db(),
        user_id,
        body.session_id,
        role=body.role,
        content=body.content,
        figures=MessageFigures(
            tokens=body.tokens,
            cost_micro_usd=body.cost_usd,
            ai_request_id=body.ai_request_id,
            provider=body.provider,
            model=body.model,
        ),
        idempotency_key=client_key(body.idempotency_key, 255),
    )
    publish_notifications(get_publisher(), added.notifications)
    headers = {REPLAYED_HEADER: "true"} if added.duplicate else {}
    return jsonify(added.message.model_dump(mode="json")), 200, headers
