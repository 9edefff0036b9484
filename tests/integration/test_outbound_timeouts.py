"""Every outbound call gives up on a server that accepts the connection and never answers."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.auth import jwks
from conveyor.billing.stripe_api import client_for, provider_errors
from conveyor.errors import PaymentProviderError
from conveyor.settings import Settings
from conveyor.steps import StepContext, StepFailure
from conveyor.steps.http import HttpConfig, run_http
from conveyor.steps.llm import LlmConfig, run_llm
from tests.support import make_settings


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback address whose connections the kernel accepts and nobody ever answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for calls only: no database or Redis is reached."""
    return make_settings("postgresql:///unused", "redis://unused", tmp_path, **overrides)


def step_context(settings: Settings, seconds: float) -> StepContext:
    return StepContext(
        run_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        step="call",
        attempt=1,
        settings=settings,
        deadline=time.monotonic() + seconds,
    )


def test_an_http_step_gives_up_when_its_time_is_up(silent_server: str, tmp_path: Path) -> None:
    ctx = step_context(settings_for(tmp_path), 0.5)
    started = time.monotonic()

    with pytest.raises(StepFailure) as failure:
        run_http(ctx, HttpConfig.model_validate({"url": silent_server + "/slow"}))

    assert time.monotonic() - started < 2
    assert failure.value.retryable
    assert "timed out" in failure.value.message


def test_an_llm_step_gives_up_when_its_time_is_up(silent_server: str, tmp_path: Path) -> None:
    ctx = step_context(settings_for(tmp_path, llm_base_url=silent_server + "/v1"), 0.5)
    started = time.monotonic()

    with pytest.raises(StepFailure) as failure:
        run_llm(ctx, LlmConfig.model_validate({"prompt": "hello"}))

    assert time.monotonic() - started < 2
    assert failure.value.code == "LLM_ERROR"
    assert "timed out" in failure.value.message


def test_a_stripe_call_gives_up_within_its_timeout_and_retry_budget(
    silent_server: str, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path,
        stripe_secret_key="sk_test_silent",
        stripe_api_base=silent_server,
        stripe_timeout_seconds=0.3,
    )
    started = time.monotonic()

    with pytest.raises(PaymentProviderError), provider_errors():
        client_for(settings).v1.customers.create()

    # Three attempts of 0.3 s plus stripe-python's backoff between them (0.5 s, then 1 s, jittered).
    assert time.monotonic() - started < 8


def test_fetching_the_jwks_gives_up_after_its_timeout(silent_server: str) -> None:
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        jwks.fetch_json(silent_server + "/auth/v1/.well-known/jwks.json")

    assert time.monotonic() - started < jwks.FETCH_TIMEOUT_SECONDS + 2
