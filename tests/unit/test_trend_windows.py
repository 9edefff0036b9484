"""The window of a trend (conveyor.ops.analytics.TrendsQuery): dates at the edge of datetime's
range are bad input, and a live window that outgrows the most buckets keeps its newest ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from conveyor.ops.analytics import MAX_BUCKETS, TrendsQuery, newest_window

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "params",
    [
        {"end_date": "0001-01-01T00:00:00"},
        {"start_date": "9999-12-31T23:00:00-05:00"},
        {"end": "0001-01-01T00:00:00"},
    ],
    ids=["end in year 1", "start past year 9999 in UTC", "native end in year 1"],
)
def test_a_date_at_the_edge_of_the_calendar_is_invalid_input_not_an_overflow(
    params: dict[str, str],
) -> None:
    with pytest.raises(ValidationError, match="between the years"):
        TrendsQuery.model_validate({"topic": "lead_trends", **params})


def test_a_live_hourly_window_past_the_most_buckets_keeps_the_newest_ones() -> None:
    started = NOW - timedelta(hours=MAX_BUCKETS["hourly"] + 5)
    window = {"start_date": started.isoformat(), "aggregation": "hourly"}

    moved = newest_window(window, NOW)

    query = TrendsQuery.model_validate({"topic": "lead_trends", **moved, "end": NOW.isoformat()})
    assert query.start == NOW - timedelta(hours=MAX_BUCKETS["hourly"] - 1)
    assert query.end == NOW


def test_a_window_with_a_fixed_end_is_never_moved() -> None:
    window = {"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-02-01T00:00:00Z"}

    assert newest_window(window, NOW) == window
