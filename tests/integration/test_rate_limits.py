"""Global LLM rate limits against a real Redis: admission, waits, corrections, pushback."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conveyor.setting_values import LlmRateLimit
from conveyor.settings import Settings
from conveyor.steps import rate_limits
from conveyor.steps.base import CallEstimate, StepContext, StepDeferred

MODEL = "gpt-test"


def limited(settings: Settings, max_wait: float = 0.0, **limit: int) -> Settings:
    """settings with one limit on fake:gpt-test over a 60 s window."""
    return settings.model_copy(
        update={
            "llm_rate_limits": {f"fake:{MODEL}": LlmRateLimit.model_validate(limit)},
            "llm_rate_limit_window_seconds": 60.0,
            "llm_rate_limit_max_wait_seconds": max_wait,
        }
    )


def context(settings: Settings, user: uuid.UUID | None = None) -> StepContext:
    return StepContext(
        run_id=uuid.uuid4(),
        user_id=user or uuid.uuid4(),
        step="call",
        attempt=1,
        settings=settings,
        deadline=time.monotonic() + 30,
    )


def estimate(tokens: int) -> CallEstimate:
    return CallEstimate(
        provider="fake", model=MODEL, prompt_tokens=tokens - 1, completion_tokens=1,
        cost_micro_usd=None,
    )  # fmt: skip


def test_a_call_that_does_not_fit_the_window_is_deferred_until_the_oldest_expires(
    settings: Settings,
) -> None:
    ctx = context(limited(settings, tokens_per_minute=1000))
    rate_limits.acquire(ctx, estimate(600))

    with pytest.raises(StepDeferred) as deferred:
        rate_limits.acquire(ctx, estimate(600))

    assert deferred.value.reason == "rate_limit"
    assert deferred.value.until is not None
    expected = datetime.now(UTC) + timedelta(seconds=60)
    assert abs((deferred.value.until - expected).total_seconds()) < 2


def test_calls_that_fit_together_are_admitted_without_waiting(settings: Settings) -> None:
    ctx = context(limited(settings, tokens_per_minute=1000))

    grants = [rate_limits.acquire(ctx, estimate(500)) for _ in range(2)]

    assert all(grant is not None for grant in grants)


def test_a_call_larger_than_the_limit_is_admitted_alone_in_an_empty_window(
    settings: Settings,
) -> None:
    ctx = context(limited(settings, tokens_per_minute=1000))

    assert rate_limits.acquire(ctx, estimate(5000)) is not None
    with pytest.raises(StepDeferred):
        rate_limits.acquire(ctx, estimate(1))


def test_the_tokens_a_call_did_not_use_are_given_back(settings: Settings) -> None:
    ctx = context(limited(settings, tokens_per_minute=1000))
    first = rate_limits.acquire(ctx, estimate(900))

    rate_limits.settle(ctx, first, 100)

    assert rate_limits.acquire(ctx, estimate(900)) is not None


def test_requests_per_minute_count_calls_whatever_their_tokens(settings: Settings) -> None:
    ctx = context(limited(settings, requests_per_minute=2))
    rate_limits.acquire(ctx, estimate(1))
    rate_limits.acquire(ctx, estimate(1))

    with pytest.raises(StepDeferred):
        rate_limits.acquire(ctx, estimate(1))


def test_a_per_user_limit_gives_each_user_a_budget_of_their_own(settings: Settings) -> None:
    limits = limited(settings, tokens_per_minute=1000, per_user=True)
    rate_limits.acquire(context(limits), estimate(1000))

    assert rate_limits.acquire(context(limits), estimate(1000)) is not None


def test_a_short_wait_sleeps_in_the_worker_and_then_admits(settings: Settings) -> None:
    limits = limited(settings, max_wait=5.0, tokens_per_minute=1000)
    ctx = context(limits)
    grant = rate_limits.acquire(ctx, estimate(10))
    rate_limits.block(ctx, grant, 0.5)
    started = time.monotonic()

    assert rate_limits.acquire(ctx, estimate(10)) is not None
    assert time.monotonic() - started >= 0.4


def test_a_provider_block_holds_the_key_for_every_caller(settings: Settings) -> None:
    limits = limited(settings, tokens_per_minute=10**6)
    grant = rate_limits.acquire(context(limits), estimate(10))

    rate_limits.block(context(limits), grant, 30)

    with pytest.raises(StepDeferred) as deferred:
        rate_limits.acquire(context(limits), estimate(10))
    assert deferred.value.detail["wait"] > 25


def test_without_a_configured_limit_nothing_is_taken(settings: Settings) -> None:
    assert rate_limits.acquire(context(settings), estimate(10**9)) is None


def test_pushback_reads_retry_after_and_spent_openai_quotas() -> None:
    retry = httpx.Response(429, headers={"retry-after": "7"})
    spent = httpx.Response(
        200, headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"}
    )
    left = httpx.Response(
        200, headers={"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "1m30s"}
    )

    assert [rate_limits.pushback_seconds(r) for r in (retry, spent, left)] == [7.0, 90.0, None]
    assert rate_limits.reset_seconds("20ms") == pytest.approx(0.02)


def test_pushback_is_capped_and_ignores_numbers_that_are_not_durations() -> None:
    answers = [
        httpx.Response(429, headers={"retry-after": value}) for value in ("86400", "inf", "nan")
    ]

    assert [rate_limits.pushback_seconds(r) for r in answers] == [
        rate_limits.MAX_PUSHBACK_SECONDS,
        1.0,
        1.0,
    ]


def test_limits_in_force_show_each_keys_use_of_the_window(settings: Settings) -> None:
    limits = limited(settings, tokens_per_minute=1000, requests_per_minute=10)
    ctx = context(limits)
    rate_limits.acquire(ctx, estimate(300))
    rate_limits.acquire(ctx, estimate(200))

    [usage] = rate_limits.limits_in_force(limits)

    assert (usage.key, usage.requests_used, usage.tokens_used) == (f"fake:{MODEL}", 2, 500)
    assert (usage.tokens_per_minute, usage.requests_per_minute) == (1000, 10)
