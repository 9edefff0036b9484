"""Usage a client reports for itself, recorded only within the month's quota (Witchcraft's
`POST /api/ai/track-usage`): `record_usage_within_quota` in
sql/20261207001500_witchcraft_usage.sql, exactly once per idempotency key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from conveyor.db import Connection, Database
from conveyor.errors import IdempotencyKeyReused, QuotaExceeded
from conveyor.events.notifications import Notification
from conveyor.ledger.accounts import USAGE_EVENTS, UsageEventView
from conveyor.ledger.balances import UsageRecord, usage_arguments
from conveyor.ledger.usage import announce_quota_threshold

# What a repeated key must match for the repeat to be the same request (costs only when sent:
# an omitted cost was priced from model_prices at the first recording).
COMPARED = (
    "provider",
    "model",
    "agent_mode",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "session_id",
    "success",
)


@dataclass(frozen=True)
class Tracked:
    """The recorded event (the first one for a repeated key) and whether this call repeated it;
    notifications to publish after commit."""

    event: UsageEventView
    duplicate: bool
    notifications: tuple[Notification, ...] = ()


def next_period_start(now: datetime) -> datetime:
    """Midnight UTC on the 1st of the month after now's (when a monthly quota resets)."""
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def quota_exceeded() -> QuotaExceeded:
    """The refusal of usage that does not fit in this month's quota."""
    now = datetime.now(UTC)
    resets = next_period_start(now)
    return QuotaExceeded(
        f"This request's tokens and cost do not fit in your monthly usage quota; it resets on "
        f"{resets:%Y-%m-%d}. Nothing was recorded. Upgrade your plan to continue sooner.",
        retry_after=int((resets - now).total_seconds()) + 1,
    )


def usage_event(conn: Connection, user_id: UUID, event_id: int) -> UsageEventView | None:
    """One of the user's usage events, or None."""
    row = conn.execute(
        f"select {USAGE_EVENTS.columns} from usage_events where id = %s and user_id = %s",  # noqa: S608
        (event_id, user_id),
    ).fetchone()
    return None if row is None else UsageEventView.model_validate(row)


def same_request(event: UsageEventView, record: UsageRecord) -> bool:
    """Whether record is the request event recorded (a retry), not another one under its key."""
    if any(getattr(event, name) != getattr(record, name) for name in COMPARED):
        return False
    if event.error != record.error:
        return False
    sent = (record.input_cost_micro_usd, record.output_cost_micro_usd)
    stored = (event.input_cost_micro_usd, event.output_cost_micro_usd)
    return all(s is None or s == t for s, t in zip(sent, stored, strict=True))


def record_within_quota(db: Database, user_id: UUID, record: UsageRecord) -> Tracked:
    """Record the request once if its tokens and cost fit in this month's quota, else
    QuotaExceeded with nothing recorded. A repeated key answers the first recording (no new
    check); IdempotencyKeyReused if the repeat describes a different request."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            select * from record_usage_within_quota(
              p_user => %(user)s, p_idempotency_key => %(idempotency_key)s,
              p_provider => %(provider)s, p_model => %(model)s,
              p_prompt_tokens => %(prompt_tokens)s, p_completion_tokens => %(completion_tokens)s,
              p_input_cost => %(input_cost_micro_usd)s,
              p_output_cost => %(output_cost_micro_usd)s, p_agent_mode => %(agent_mode)s,
              p_latency_ms => %(latency_ms)s, p_session_id => %(session_id)s,
              p_success => %(success)s, p_error => %(error)s)
            """,
            usage_arguments(user_id, record),
        ).fetchone()
        assert row is not None
        if row["quota_exceeded"]:
            raise quota_exceeded()
        event = usage_event(conn, user_id, row["event_id"])
        assert event is not None
        if row["duplicate"] and not same_request(event, record):
            raise IdempotencyKeyReused(
                "That idempotency key was already used for a different usage report; send a new "
                "key for a new request."
            )
        percent = int(row["threshold_crossed"])
        # In the recording's transaction: a threshold is reported once, so is its notice.
        note = announce_quota_threshold(conn, user_id, percent) if percent else None
    return Tracked(event, bool(row["duplicate"]), (note,) if note is not None else ())
