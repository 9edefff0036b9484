"""Reading an OpenAI-style event stream and coalescing its text into `step_tokens` events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conveyor.settings import Settings
from conveyor.steps.base import StepContext
from conveyor.steps.llm_stream import StreamCut, TokenEmitter, sse_payloads


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def context(sent: list[tuple[str, dict[str, Any]]]) -> StepContext:
    return StepContext(
        run_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        step="reply",
        attempt=2,
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        deadline=0.0,
        emit=lambda event, data: sent.append((event, data)),
    )


def test_sse_payloads_yields_the_chunks_up_to_done_skipping_comments_and_blank_lines() -> None:
    lines = [": keep-alive", "", 'data: {"n": 1}', "event: x", 'data:{"n": 2}', "data: [DONE]"]

    assert list(sse_payloads(lines)) == [{"n": 1}, {"n": 2}]


def test_sse_payloads_ignores_anything_after_done() -> None:
    assert list(sse_payloads(["data: [DONE]", "data: not json"])) == []


def test_a_stream_ending_without_done_is_cut() -> None:
    chunks = sse_payloads(['data: {"n": 1}'])

    assert next(chunks) == {"n": 1}
    with pytest.raises(StreamCut):
        next(chunks)


def test_a_chunk_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not an object"):
        list(sse_payloads(["data: [1, 2]"]))


def test_the_first_text_is_emitted_at_once_and_later_text_is_coalesced_per_interval() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    emitter = TokenEmitter(context(sent), 0.05, clock)

    emitter.add("Hel")
    clock.now += 0.01
    emitter.add("lo")
    clock.now += 0.01
    emitter.add(", ")
    clock.now += 0.04
    emitter.add("wor")
    emitter.add("ld")
    emitter.flush()

    assert sent == [
        ("step_tokens", {"step": "reply", "attempt": 2, "index": 0, "text": "Hel"}),
        ("step_tokens", {"step": "reply", "attempt": 2, "index": 1, "text": "lo, wor"}),
        ("step_tokens", {"step": "reply", "attempt": 2, "index": 2, "text": "ld"}),
    ]


def test_a_flush_with_nothing_buffered_emits_nothing() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    emitter = TokenEmitter(context(sent), 0.05, Clock())

    emitter.add("")
    emitter.flush()

    assert sent == []


def test_discard_reports_the_characters_sent_not_those_still_buffered() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    emitter = TokenEmitter(context(sent), 0.05, Clock())
    emitter.add("abc")
    emitter.add("de")  # within the interval: buffered, never sent

    emitter.discard()

    assert sent[-1] == ("step_tokens_discarded", {"step": "reply", "attempt": 2, "chars": 3})
    assert len(sent) == 2


def test_discard_before_any_text_was_sent_emits_nothing() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    TokenEmitter(context(sent), 0.05, Clock()).discard()

    assert sent == []
