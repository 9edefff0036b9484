"""Streamed chat completions: read the provider's server-sent events and hand the text out as
coalesced `step_tokens` run events while it arrives (the `llm` step with `stream: true`)."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx

from conveyor.steps.base import StepContext, StepFailure, StepStopped
from conveyor.steps.http import failure_for_status, failure_for_transport

STEP_TOKENS = "step_tokens"
STEP_TOKENS_DISCARDED = "step_tokens_discarded"
DONE = "[DONE]"
CODE = "LLM_ERROR"


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CAs, or SSL_CERT_FILE), built once: loading the
    CAs takes ~20 ms, which every call would otherwise add before its first token."""
    return httpx.create_ssl_context()


class StreamCut(Exception):
    """The event stream ended before `data: [DONE]` (the connection dropped mid-way)."""


def sse_payloads(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an OpenAI-style event stream, in order, up to `data: [DONE]`.

    Raises StreamCut when the lines end without [DONE] and ValueError on a payload that is not
    a JSON object. Comments (`:`), other fields and blank lines are skipped."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == DONE:
            return
        chunk = json.loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError(f"stream chunk is not an object: {payload[:200]}")
        yield chunk
    raise StreamCut("the stream ended before [DONE]")


class TokenEmitter:
    """Buffers streamed text and emits it as `step_tokens` at most every flush_seconds; flush()
    sends what is left. `chars` counts what clients were sent (to discard it if the attempt fails).
    """

    def __init__(
        self,
        ctx: StepContext,
        flush_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.index = 0
        self.chars = 0
        self._pending: list[str] = []
        self._last_flush: float | None = (
            None  # the first text goes out at once: time to first token
        )

    def add(self, text: str) -> None:
        """Take new text; emit the buffer when the last event is at least flush_seconds old."""
        if not text:
            return
        self._pending.append(text)
        now = self.clock()
        if self._last_flush is None or now - self._last_flush >= self.flush_seconds:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Emit whatever text is buffered as one event (nothing when the buffer is empty)."""
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._last_flush = self.clock() if now is None else now
        if self.ctx.emit is not None:
            self.ctx.emit(
                STEP_TOKENS,
                {
                    "step": self.ctx.step,
                    "attempt": self.ctx.attempt,
                    "index": self.index,
                    "text": text,
                },
            )
        self.index += 1
        self.chars += len(text)

    def discard(self) -> None:
        """Tell clients the text sent for this attempt is void (the attempt failed)."""
        self._pending.clear()
        if self.chars and self.ctx.emit is not None:
            self.ctx.emit(
                STEP_TOKENS_DISCARDED,
                {"step": self.ctx.step, "attempt": self.ctx.attempt, "chars": self.chars},
            )


@dataclass
class StreamedReply:
    """What a completed stream said: its whole text and, from the last chunk, its usage."""

    text: str
    model: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    request_id: str | None


def completion_as_chunk(completion: Any) -> dict[str, Any]:
    """A whole (non-streamed) chat completion in the shape of one stream chunk."""
    choices = [
        {
            "index": choice.get("index", 0),
            "delta": choice.get("message") or {},
            "finish_reason": choice.get("finish_reason"),
        }
        for choice in completion.get("choices") or []
    ]
    return {**completion, "choices": choices}


def _take(chunk: dict[str, Any], reply: StreamedReply, emitter: TokenEmitter) -> None:
    """Fold one chunk into the reply; its delta text goes to the emitter."""
    reply.model = reply.model or chunk.get("model")
    reply.request_id = reply.request_id or chunk.get("id")
    if chunk.get("usage"):
        reply.usage = chunk["usage"]
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        text = (choice.get("delta") or {}).get("content") or ""
        if text:
            reply.text += text
            emitter.add(text)
        if choice.get("finish_reason"):
            reply.finish_reason = choice["finish_reason"]


def stream_completion(
    ctx: StepContext,
    request: httpx.Request,
    on_response: Callable[[httpx.Response], None] | None = None,
    before_send: Callable[[], None] | None = None,
) -> StreamedReply:
    """Send a `"stream": true` request and read it to [DONE], emitting the text as it comes.

    A dropped or malformed stream is a retryable StepFailure, after a `step_tokens_discarded`
    for what this attempt had sent; ctx.check() between chunks lets a cancel end it."""
    ctx.check()
    emitter = TokenEmitter(ctx, ctx.settings.llm_stream_flush_seconds)
    reply = StreamedReply(text="", model=None, finish_reason=None, usage=None, request_id=None)
    try:
        with httpx.Client(
            timeout=ctx.remaining(), follow_redirects=False, verify=tls_context()
        ) as client:
            if before_send is not None:
                before_send()  # the rate limit, taken once the client is ready
            response = client.send(request, stream=True)
            try:
                if on_response is not None:
                    on_response(response)  # the provider's quota headers, before the body
                if not response.is_success:
                    response.read()
                    raise failure_for_status(response, "LLM", CODE)
                reply.request_id = response.headers.get("x-request-id")
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignores `stream` sends one completion: one event, same result.
                    _take(completion_as_chunk(json.loads(response.read())), reply, emitter)
                else:
                    for chunk in sse_payloads(response.iter_lines()):
                        ctx.check()
                        _take(chunk, reply, emitter)
            finally:
                response.close()
        emitter.flush()
    except StepStopped:
        # Stopped (a drain, a cancel, the timeout): a drained attempt is given back and runs again
        # under the same number, so its text is marked void now, while the run is still held.
        # The run may be no longer ours (the emit then raises): nothing to mark, then.
        with contextlib.suppress(Exception):
            emitter.discard()
        raise
    except httpx.TransportError as exc:
        emitter.discard()
        raise failure_for_transport(exc, "LLM stream", CODE) from exc
    except StreamCut as exc:
        emitter.discard()
        raise StepFailure(f"LLM stream cut off: {exc}", retryable=True, code=CODE) from exc
    except (ValueError, TypeError, AttributeError) as exc:
        emitter.discard()
        raise StepFailure(
            f"LLM stream is not a chat completion stream: {exc!r}", retryable=True, code=CODE
        ) from exc
    return reply
