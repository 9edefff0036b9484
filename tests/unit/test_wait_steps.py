"""The durable wait kinds' configuration as a run renders it (conveyor/steps/wait.py) and the
signal body (conveyor/runs/signals.py): keys compared as text, bounds on `until`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor.runs.signals import SignalRequest
from conveyor.steps import StepFailure, StepSuspended
from conveyor.steps.wait import (
    MAX_WAIT_SECONDS,
    SleepConfig,
    WaitForEventConfig,
    parse_time,
    run_sleep,
    run_wait_for_event,
)

NO_CONTEXT: Any = None  # neither kind reads its step context


def test_an_integer_match_key_rendered_from_a_template_is_compared_as_text() -> None:
    config = WaitForEventConfig(event="paid", match=42)

    with pytest.raises(StepSuspended) as suspended:
        run_wait_for_event(NO_CONTEXT, config)

    assert suspended.value.request.match == "42"
    assert SignalRequest.model_validate({"match": 42}).match == "42"


def test_spaces_around_a_match_key_are_dropped_as_from_a_signals() -> None:
    with pytest.raises(StepSuspended) as suspended:
        run_wait_for_event(NO_CONTEXT, WaitForEventConfig(event="paid", match=" T-1\n"))

    assert suspended.value.request.match == "T-1"
    assert SignalRequest.model_validate({"match": " T-1\n"}).match == "T-1"


def test_a_sleep_until_further_away_than_the_longest_wait_fails_the_step() -> None:
    far = datetime.now(UTC) + timedelta(seconds=MAX_WAIT_SECONDS + 3600)

    with pytest.raises(StepFailure) as failed:
        run_sleep(NO_CONTEXT, SleepConfig(until=far.isoformat()))

    assert failed.value.code == "INVALID_STEP_CONFIG"


def test_a_time_whose_offset_leaves_the_calendar_is_invalid_not_an_overflow() -> None:
    with pytest.raises(ValueError, match="outside the years"):
        parse_time("9999-12-31T23:59:59-14:00")
