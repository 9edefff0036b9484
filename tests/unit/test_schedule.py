"""When periodic jobs are due and which period each run is for, in any timezone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from conveyor.ops.schedule import Daily, Every, Hourly, Job, Monthly, due_now

UTC_ZONE = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
CATCH_UP = timedelta(days=7)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_a_daily_job_is_due_from_its_time_until_the_next_days() -> None:
    daily = Daily(hour=2)
    assert daily.last_due(at("2026-11-23T01:59:00+00:00"), UTC_ZONE) == at("2026-11-22T02:00+00:00")
    assert daily.last_due(at("2026-11-23T02:00:00+00:00"), UTC_ZONE) == at("2026-11-23T02:00+00:00")
    assert daily.period_key(at("2026-11-23T02:00+00:00"), UTC_ZONE) == "2026-11-23"


def test_the_monthly_reset_fires_at_local_midnight_across_a_dst_change() -> None:
    monthly = Monthly(day=1, hour=0)
    # New York leaves daylight saving time on 1 November 2026 at 02:00: midnight is still EDT.
    assert monthly.last_due(at("2026-11-01T04:00:00+00:00"), NEW_YORK) == at(
        "2026-11-01T00:00:00-04:00"
    )
    assert monthly.last_due(at("2026-11-01T03:59:59+00:00"), NEW_YORK) == at(
        "2026-10-01T00:00:00-04:00"
    )
    # The next one is in standard time, an hour later in UTC.
    assert monthly.next_due(at("2026-11-15T12:00:00+00:00"), NEW_YORK) == at(
        "2026-12-01T05:00:00+00:00"
    )
    assert monthly.period_key(at("2026-11-01T04:00:00+00:00"), NEW_YORK) == "2026-11"


def test_the_monthly_period_is_the_local_month_not_the_utc_one() -> None:
    monthly = Monthly()
    # 23:30 UTC on 31 October is already 1 November in Berlin (CET, after the October change).
    due = monthly.last_due(at("2026-10-31T23:30:00+00:00"), BERLIN)
    assert monthly.period_key(due, BERLIN) == "2026-11"


def test_a_daily_time_skipped_by_dst_still_fires_once_that_day() -> None:
    daily = Daily(hour=2, minute=30)  # 02:30 does not exist in Berlin on 29 March 2026
    due = daily.last_due(at("2026-03-29T12:00:00+00:00"), BERLIN)
    assert daily.period_key(due, BERLIN) == "2026-03-29"
    before = daily.last_due(due - timedelta(seconds=1), BERLIN)
    assert daily.period_key(before, BERLIN) == "2026-03-28"


def test_interval_slots_are_aligned_and_keyed_in_utc() -> None:
    every = Every(30)
    due = every.last_due(at("2026-11-23T10:00:47+00:00"), UTC_ZONE)
    assert due == at("2026-11-23T10:00:30+00:00")
    assert every.period_key(due, UTC_ZONE) == "2026-11-23T10:00:30Z"


def test_hourly_periods_are_utc_hours_so_a_repeated_local_hour_runs_twice() -> None:
    hourly = Hourly(minute=5)
    first = hourly.last_due(at("2026-11-01T05:30:00+00:00"), NEW_YORK)  # 01:30 EDT
    second = hourly.last_due(at("2026-11-01T06:30:00+00:00"), NEW_YORK)  # 01:30 EST
    assert hourly.period_key(first, NEW_YORK) != hourly.period_key(second, NEW_YORK)


def job(cadence: Daily | Monthly | Every) -> Job:
    return Job(name="j", task="maintenance.j", queue="maintenance", cadence=cadence,
               expires_seconds=60)  # fmt: skip


def test_a_missed_daily_period_is_due_on_start_within_the_look_back() -> None:
    [due] = due_now([job(Daily(hour=2))], at("2026-11-23T18:00:00+00:00"), UTC_ZONE, CATCH_UP)
    assert due.period_key == "2026-11-23"


def test_a_monthly_reset_missed_on_the_first_runs_when_the_system_is_back() -> None:
    [due] = due_now([job(Monthly())], at("2026-11-03T09:00:00+00:00"), UTC_ZONE, CATCH_UP)
    assert due.period_key == "2026-11"


def test_a_period_older_than_the_look_back_is_not_caught_up() -> None:
    assert due_now([job(Monthly())], at("2026-11-20T09:00:00+00:00"), UTC_ZONE, CATCH_UP) == []
