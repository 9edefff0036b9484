"""The engine's side of credit reservations: ctx.reserve for a step attempt (a refusal defers
the step for credits), giving an attempt's hold back, and what a lane (map item, branch) makes
of a deferral it cannot park for. docs/architecture.md, "Waiting for credits"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog

from conveyor.db import Database
from conveyor.ledger import reservations
from conveyor.settings import Settings
from conveyor.steps import CallEstimate, StepDeferred, StepFailure

log = structlog.get_logger(__name__)


def reserve_or_defer(
    db: Database,
    settings: Settings,
    user_id: UUID,
    key: reservations.HoldKey,
    estimate: CallEstimate,
) -> None:
    """Hold the call's worst case. Refused for credits: StepDeferred (the run waits for credits
    up to credit_wait_seconds); refused for the month's quota: a final QUOTA_EXCEEDED failure
    (credits would not help)."""
    verdict = reservations.reserve(db, user_id, key, estimate, settings.llm_credits_per_usd)
    if verdict.reserved:
        return
    if verdict.code == "QUOTA_EXCEEDED":
        raise StepFailure(
            f"the model call's worst case ({estimate.total_tokens} tokens) does not fit in "
            "this month's remaining quota",
            retryable=False,
            code="QUOTA_EXCEEDED",
        )
    raise StepDeferred(
        "credits",
        until=datetime.now(UTC) + timedelta(seconds=settings.credit_wait_seconds),
        detail={"needed": verdict.credits, "available": verdict.available, "model": estimate.model},
    )


def release_quietly(db: Database, key: reservations.HoldKey) -> None:
    """Give a failed, retried, deferred or interrupted attempt's hold back now; if Postgres is
    unreachable the sweep (release_stale_reservations) does it later."""
    try:
        reservations.release_attempt(db, key)
    except Exception:
        log.warning("reservation_release_failed", run_id=str(key.run_id), exc_info=True)


def lane_refusal(deferred: StepDeferred) -> StepFailure:
    """A lane (map item, branch) cannot park alone: refused credits fail the item for good; a
    rate limit is a retryable failure whose backoff is the limit's wait."""
    if deferred.reason == "credits":
        detail = deferred.detail
        return StepFailure(
            f"the model call needs {detail.get('needed')} credits and "
            f"{detail.get('available')} are free",
            retryable=False,
            code="INSUFFICIENT_CREDITS",
        )
    wait = 1.0
    if deferred.until is not None:
        wait = max(0.0, (deferred.until - datetime.now(UTC)).total_seconds())
    return StepFailure("rate limited", retryable=True, code="RATE_LIMITED", retry_after=wait)
