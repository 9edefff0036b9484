"""The usage hook: every model call a step makes is charged here, inside the step's checkpoint
transaction, so usage is recorded exactly when (and only if) the step's output is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor import ledger, metrics, outbound
from conveyor.db import Connection
from conveyor.events import notifications
from conveyor.events.notifications import Notification
from conveyor.ledger import reservations
from conveyor.steps import LlmUsage

QUOTA_THRESHOLD_CROSSED = "quota_threshold_crossed"


def announce_quota_threshold(conn: Connection, user_id: UUID, percent: int) -> Notification | None:
    """Usage crossed percent of the user's quota (reported once per period): notify the user and,
    at 100 percent, queue the outbound `quota.exceeded` event, in the transaction that recorded
    the usage. The notification, unless one was made for this period already."""
    notification = notifications.notify_quota(conn, user_id, percent)
    outbound.record_quota_threshold(conn, user_id, percent)
    return notification


@dataclass(frozen=True)
class StepOwner:
    """Whose run a step belongs to, for the ledger."""

    run_id: UUID
    user_id: UUID
    session_id: UUID | None
    workflow_id: str


def record_step_usage(
    conn: Connection,
    owner: StepOwner,
    *,
    position: int,
    attempt: int,
    usage: LlmUsage,
    item: int | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Store the call's figures on the step (or the map item) and charge them to the ledger once
    (keyed by run, step, item and attempt), settling its credit hold; returns a
    `quota_threshold_crossed` event when this call crossed 80% or 100%."""
    if item is None:
        conn.execute(
            "update workflow_steps set usage = %s where run_id = %s and position = %s",
            (Jsonb(usage.as_dict()), owner.run_id, position),
        )
        key = f"run:{owner.run_id}:step:{position}:attempt:{attempt}"
    else:
        conn.execute(
            "update run_work_items set usage = %s "
            "where run_id = %s and position = %s and item = %s",
            (Jsonb(usage.as_dict()), owner.run_id, position, item),
        )
        key = f"run:{owner.run_id}:step:{position}:item:{item}:attempt:{attempt}"
    # Settle: the hold goes, and the real cost is charged at the rate the hold was priced at
    # (none held: the call costs no credits, as before reservations). An unpriced model is
    # priced as its hold was: under the requested name, not the provider's dated variant.
    rate, held_model = reservations.release_step(conn, owner.run_id, position, item)
    credits = reservations.call_credits(
        conn,
        held_model or usage.model,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.input_cost_micro_usd + usage.output_cost_micro_usd if usage.priced else None,
        rate,
    )
    recorded = ledger.record_usage(
        conn,
        owner.user_id,
        ledger.UsageRecord(
            idempotency_key=key,
            provider=usage.provider,
            model=usage.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            # LLM_PRICES when the model is in it, else the ledger prices it from `model_prices`.
            input_cost_micro_usd=usage.input_cost_micro_usd if usage.priced else None,
            output_cost_micro_usd=usage.output_cost_micro_usd if usage.priced else None,
            agent_mode=owner.workflow_id,
            latency_ms=usage.latency_ms,
            run_id=owner.run_id,
            step_position=position,
            session_id=owner.session_id,
            credits=credits,
        ),
    )
    if not recorded.duplicate:
        metrics.record_tokens(
            usage.model,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.input_cost_micro_usd + usage.output_cost_micro_usd,
            "run",
        )
    if recorded.threshold_crossed == 0:
        return []
    # The run event published after commit nudges the user's websocket subscribers to read it.
    announce_quota_threshold(conn, owner.user_id, recorded.threshold_crossed)
    return [
        (
            QUOTA_THRESHOLD_CROSSED,
            {"user_id": str(owner.user_id), "percent": recorded.threshold_crossed},
        )
    ]
