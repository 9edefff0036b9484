"""`POST /api/usage`: other backends report AI usage, one event or a batch of up to 1,000.

The request is validated and handed to the `usage` queue; the worker records the batch in one
transaction (conveyor.usage_ingest.record_batch_json). 202 means the batch is in Redis. When Redis
cannot take it the answer is 503 with Retry-After and nothing is kept: the caller sends the same
batch again, and the idempotency keys make that safe even if part of it was queued after all.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import metrics
from conveyor.constants import TASK_RECORD_USAGE
from conveyor.errors import Forbidden, ServiceUnavailable
from conveyor.usage_ingest import USAGE_WRITE_SCOPE, UsageBatchIn, events_json
from web.body import parse_body
from web.context import get_enqueuer, get_principal

bp = Blueprint("usage_ingest", __name__)

RETRY_AFTER_SECONDS = 5


@bp.post("/api/usage")
def ingest_usage() -> tuple[Response, int]:
    """Validate the events and queue them for recording; 202 `{accepted: n}`."""
    principal = get_principal()
    if not principal.is_service:
        raise Forbidden(
            f"Usage is reported by backends: call with a service token with scope "
            f"{USAGE_WRITE_SCOPE!r}, not a user's token."
        )
    principal.require_scope(USAGE_WRITE_SCOPE)
    batch = parse_body(UsageBatchIn)
    if not get_enqueuer().enqueue(TASK_RECORD_USAGE, events_json(batch.events)):
        raise ServiceUnavailable(
            "The usage queue is unreachable and nothing was accepted; send the same events "
            "again shortly (their idempotency keys make the retry safe).",
            retry_after=RETRY_AFTER_SECONDS,
        )
    count_accepted(batch)
    return jsonify({"accepted": len(batch.events)}), 202


def count_accepted(batch: UsageBatchIn) -> None:
    """Add the batch to the usage metrics, summed per model first: one metric update per model
    rather than per event keeps a 1,000-event batch's bookkeeping off the hot path."""
    totals: dict[str, tuple[int, int, int]] = {}
    for event in batch.events:
        prompt, completion, cost = totals.get(event.model, (0, 0, 0))
        totals[event.model] = (
            prompt + event.prompt_tokens,
            completion + event.completion_tokens,
            cost + (event.input_cost_micro_usd or 0) + (event.output_cost_micro_usd or 0),
        )
    for model, (prompt, completion, cost) in totals.items():
        metrics.record_tokens(model, prompt, completion, cost, "api")
