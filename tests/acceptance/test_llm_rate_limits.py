"""Global LLM rate limits hold across worker processes: the tokens the provider receives in any
window stay within the limit plus one step's estimate, and a provider's 429 slows every worker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

import tests.workflows_for_tests  # noqa: F401 - registers write_brief
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import submit
from tests.fake_llm import Arrival, FakeLlm
from tests.support import ApiClient, wait_for_run, wait_until, worker_subprocess

USES_FAKE_LLM = True

# The window is scaled down from 60 s so the test is short; the guarantee is per window.
# Arrivals are timed in this (busy) test process, so the window is long against that jitter.
WINDOW = 3.0
LIMIT = 6000  # tokens a window
MAX_TOKENS = 1000
# write_brief's larger call: "draft from reply to: outline topic-NN" (37 bytes) and two
# messages' framing (prompt_token_bound), plus max_tokens.
LARGEST_ESTIMATE = 8 + 37 + 8 + MAX_TOKENS
RUNS = 12  # two llm calls each: about 4 windows' worth of tokens


def workers(settings: Settings, count: int, limits: dict[str, object], **env: str) -> ExitStack:
    """count worker processes on the runs queue, all under limits."""
    stack = ExitStack()
    for _ in range(count):
        stack.enter_context(
            worker_subprocess(
                settings,
                "runs",
                LLM_RATE_LIMITS=json.dumps(limits),
                LLM_DEFAULT_MAX_TOKENS=str(MAX_TOKENS),
                **env,
            )
        )
    return stack


@pytest.fixture
def three_limited_workers(settings: Settings, fake_llm: FakeLlm) -> Iterator[None]:
    fake_llm.completion_tokens = MAX_TOKENS  # real usage close to the estimate
    limits = {"*": {"tokens_per_minute": LIMIT}}
    with workers(settings, 3, limits, LLM_RATE_LIMIT_WINDOW_SECONDS=str(WINDOW)):
        yield


def busiest_window(arrivals: list[Arrival], window: float) -> int:
    """The most tokens that arrived in any window starting at an arrival."""
    starts = sorted(arrivals, key=lambda arrival: arrival.at)
    return max(
        sum(a.tokens for a in starts if first.at <= a.at < first.at + window) for first in starts
    )


def test_tokens_in_any_window_stay_within_the_limit_plus_one_estimate_across_3_workers(
    three_limited_workers: None, make_client: Callable[..., ApiClient], fake_llm: FakeLlm
) -> None:
    clients = [make_client(uuid.uuid4()) for _ in range(RUNS)]
    run_ids = [
        submit(client, "write_brief", {"topic": f"topic-{n:02d}"})
        for n, client in enumerate(clients)
    ]

    views = [
        wait_for_run(client, run_id, timeout=45)
        for client, run_id in zip(clients, run_ids, strict=True)
    ]

    assert [view["status"] for view in views] == ["completed"] * RUNS
    assert len(fake_llm.arrivals) == 2 * RUNS
    assert busiest_window(fake_llm.arrivals, WINDOW) <= LIMIT + LARGEST_ESTIMATE


def test_a_providers_429_with_retry_after_holds_the_key_for_another_workers_step(
    settings: Settings, make_client: Callable[..., ApiClient], fake_llm: FakeLlm
) -> None:
    fake_llm.retry_after = "2"
    fake_llm.script("outline rejected", 429)
    with workers(settings, 2, {"*": {"requests_per_minute": 10_000}}):
        first, second = make_client(uuid.uuid4()), make_client(uuid.uuid4())
        rejected_run = submit(first, "write_brief", {"topic": "rejected"})
        [rejection] = wait_until(lambda: fake_llm.rejections, 20, "the scripted 429")
        other_run = submit(second, "write_brief", {"topic": "other"})

        assert wait_for_run(second, other_run, timeout=30)["status"] == "completed"
        assert wait_for_run(first, rejected_run, timeout=30)["status"] == "completed"

    other = next(a for a in fake_llm.arrivals if a.prompt == "outline other")
    assert other.at - rejection.at >= 1.9


def test_tokens_a_call_did_not_use_are_admitted_again_within_the_window(
    settings: Settings, make_client: Callable[..., ApiClient], fake_llm: FakeLlm
) -> None:
    # Each estimate (~1040) takes most of the 1500-token minute and real usage (~8) gives it
    # back: all six calls end well inside one 60 s window, not one call a minute.
    with workers(settings, 2, {"*": {"tokens_per_minute": 1500}}):
        clients = [make_client(uuid.uuid4()) for _ in range(3)]
        run_ids = [
            submit(client, "write_brief", {"topic": f"small-{n}"})
            for n, client in enumerate(clients)
        ]

        views = [
            wait_for_run(client, run_id, timeout=30)
            for client, run_id in zip(clients, run_ids, strict=True)
        ]

    assert [view["status"] for view in views] == ["completed"] * 3
    assert len(fake_llm.arrivals) == 6
