"""The money rules' Python side: usage recording, quotas, credits, accounts, usage ingestion."""

from conveyor.ledger.balances import (
    UsageRecord,
    activity_summary,
    add_credits,
    admission_verdict,
    check_and_consume_quota,
    deduct_credits,
    record_usage,
    remaining_quota,
    reset_period,
    start_admission,
)

__all__ = [
    "UsageRecord",
    "activity_summary",
    "add_credits",
    "admission_verdict",
    "check_and_consume_quota",
    "deduct_credits",
    "record_usage",
    "remaining_quota",
    "reset_period",
    "start_admission",
]
