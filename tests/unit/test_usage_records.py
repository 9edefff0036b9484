"""A usage record is refused when it could not be charged to a real period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.ledger.balances import UsageRecord

BASE: dict[str, Any] = {
    "idempotency_key": "k",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "prompt_tokens": 1,
    "completion_tokens": 1,
}


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(9999, 12, 31, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime.now(UTC) + timedelta(hours=1),
        datetime.now(UTC) - timedelta(days=70),
    ],
)
def test_usage_outside_this_month_and_the_last_is_refused(occurred_at: datetime) -> None:
    with pytest.raises(ValidationError, match="occurred_at"):
        UsageRecord(**BASE, occurred_at=occurred_at)


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        UsageRecord(**BASE, occurred_at=datetime.now())


def test_usage_from_a_moment_ago_is_accepted() -> None:
    at = datetime.now(UTC) - timedelta(minutes=1)

    assert UsageRecord(**BASE, occurred_at=at).occurred_at == at
