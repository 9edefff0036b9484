"""Seed 000's `POST /api/ai/track-usage`: one AI request reported by the client, recorded in the
same ledger as `/api/usage` and runs, within the month's quota, exactly once per idempotency key."""

from __future__ import annotations

import uuid
from datetime import datetime
from uuid import UUID

from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from conveyor import metrics
from conveyor.events.notifications import publish_notifications
from conveyor.ledger import UsageRecord
from conveyor.ledger.balances import MAX_TOKENS
from conveyor.ledger.ingest import USAGE_WRITE_SCOPE
from conveyor.ledger.micro_usd import UsdAsMicroUsd
from conveyor.ledger.quota_usage import record_within_quota
from conveyor.runs.sessions import require_session_owner
from web.body import IDEMPOTENCY_HEADER
from web.compat.witchcraft_common import (
    WitchcraftBody,
    acting_user,
    client_key,
    parse_witchcraft_body,
    post,
)
from web.context import get_db, get_principal, get_publisher
from web.openapi import contract

# Client keys live beside run and `/api/usage` keys in usage_events (unique per user): the
# prefix keeps a client's key from ever naming one of those events.
KEY_PREFIX = "track-usage:"
MAX_CLIENT_KEY = 255 - len(KEY_PREFIX)
REPLAYED_HEADER = "Idempotent-Replayed"


class TrackUsageBody(WitchcraftBody):
    """trackAIUsage's parameters: the request's provider, model, agent mode, tokens and USD costs,
    and an optional idempotency key (or the Idempotency-Key header)."""

    user_id: UUID | None = None
    provider: str = Field(min_length=1, max_length=100)
    model: str = Field(min_length=1, max_length=200)
    agent_mode: str = Field(min_length=1, max_length=100)
    prompt_tokens: int = Field(strict=True, ge=0, le=MAX_TOKENS)
    completion_tokens: int = Field(strict=True, ge=0, le=MAX_TOKENS)
    # Required, as the document's parameters are: a misspelt cost must not pass as "unpriced".
    input_cost_usd: UsdAsMicroUsd
    output_cost_usd: UsdAsMicroUsd
    latency_ms: int | None = Field(default=None, strict=True, ge=0, le=86_400_000)
    session_id: UUID | None = None
    success: bool = Field(default=True, strict=True)
    error_message: str | None = Field(default=None, max_length=10_000)
    idempotency_key: str | None = None


class TrackedUsage(BaseModel):
    """The recorded request (the first recording, for a repeated key): `requestId` is its usage
    event's id (`/api/usage/events`), costs in micro-USD."""

    model_config = ConfigDict(
        alias_generator=to_camel, serialize_by_alias=True, validate_by_name=True
    )

    request_id: int
    idempotency_key: str
    user_id: UUID
    session_id: UUID | None
    provider: str
    model: str
    agent_mode: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    input_cost_micro_usd: int
    output_cost_micro_usd: int
    cost_micro_usd: int
    success: bool
    recorded_at: datetime


@post("/api/ai/track-usage")
@contract(
    {200: TrackedUsage},
    body=TrackUsageBody,
    headers={IDEMPOTENCY_HEADER: "A retry with the same key answers the first recording."},
)
def track_usage() -> tuple[Response, int, dict[str, str]]:
    """Record one AI request for the caller if it fits in this month's quota (429 QUOTA_EXCEEDED,
    nothing recorded, if not); `{requestId, ...}`. A service token with scope `usage:write`
    reports for the user named in `userId`."""
    body = parse_witchcraft_body(TrackUsageBody)
    principal = get_principal()
    user_id = acting_user(principal, body.user_id, service_scope=USAGE_WRITE_SCOPE)
    db = get_db()
    if body.session_id is not None:
        require_session_owner(db, user_id, body.session_id)
    key = client_key(body.idempotency_key, MAX_CLIENT_KEY) or str(uuid.uuid4())
    tracked = record_within_quota(
        db,
        user_id,
        UsageRecord(
            idempotency_key=KEY_PREFIX + key,
            provider=body.provider,
            model=body.model,
            prompt_tokens=body.prompt_tokens,
            completion_tokens=body.completion_tokens,
            input_cost_micro_usd=body.input_cost_usd,
            output_cost_micro_usd=body.output_cost_usd,
            agent_mode=body.agent_mode,
            latency_ms=body.latency_ms,
            session_id=body.session_id,
            success=body.success,
            error=body.error_message,
        ),
    )
    event = tracked.event
    cost = event.input_cost_micro_usd + event.output_cost_micro_usd
    if not tracked.duplicate:
        metrics.record_tokens(
            event.model, event.prompt_tokens, event.completion_tokens, cost, "api"
        )
        publish_notifications(get_publisher(), tracked.notifications)
    view = TrackedUsage(
        request_id=event.id,
        idempotency_key=event.idempotency_key.removeprefix(KEY_PREFIX),
        user_id=user_id,
        session_id=event.session_id,
        provider=event.provider,
        model=event.model,
        agent_mode=event.agent_mode,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.prompt_tokens + event.completion_tokens,
        input_cost_micro_usd=event.input_cost_micro_usd,
        output_cost_micro_usd=event.output_cost_micro_usd,
        cost_micro_usd=cost,
        success=event.success,
        recorded_at=event.recorded_at,
    )
    headers = {REPLAYED_HEADER: "true"} if tracked.duplicate else {}
    return jsonify(view.model_dump(mode="json")), 200, headers
