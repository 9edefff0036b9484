"""`POST /api/usage`: other backends report AI usage, one event or a batch of up to 1,000.

The request is validated, stored in `usage_batches` (the outbox) and its id handed to the `usage`
queue; the worker records the batch in one transaction and deletes the row with it
(conveyor.ledger.ingest.record_stored_batch). 202 means the batch is in Postgres: if Redis is down
or drops the message, the requeue_usage_batches job publishes it again. When Postgres cannot take
it the answer is 503 with Retry-After; the caller sends the same batch again, and the idempotency
keys make that safe.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from conveyor import metrics
from conveyor.constants import TASK_RECORD_USAGE
from conveyor.errors import Forbidden
from conveyor.ledger.ingest import USAGE_WRITE_SCOPE, UsageBatchIn, events_json, store_batch
from web.body import parse_body
from web.context import get_db, get_enqueuer, get_principal, get_settings
from web.openapi import contract

bp = Blueprint("usage_ingest", __name__)


@bp.post("/api/usage")
@contract({202: "application/json"}, body=UsageBatchIn, auth="service", scope=USAGE_WRITE_SCOPE)
def ingest_usage() -> tuple[Response, int]:
    """Validate the events and queue them for recording; 202 `{accepted: n}`."""
    principal = get_principal()
    if not principal.is_service:
        raise Forbidden(
            f"Usage is reported by backends: call with a service token with scope "
            f"{USAGE_WRITE_SCOPE!r}, not a user's token."
        )
    principal.require_scope(USAGE_WRITE_SCOPE)
    # A full batch outgrows MAX_BODY_BYTES; only callers with the scope get the larger limit.
    request.max_content_length = get_settings().usage_max_body_bytes
    batch = parse_body(UsageBatchIn, reshape=UsageBatchIn.enclose_single_event)
    batch_id = store_batch(get_db(), events_json(batch.events), len(batch.events))
    # A failed publish loses nothing: the stored batch is republished by the requeue job.
    get_enqueuer().enqueue(TASK_RECORD_USAGE, str(batch_id))
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
