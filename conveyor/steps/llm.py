"""The `llm` step: one chat completion over an OpenAI-compatible API (OpenAI, Ollama, vLLM)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import BaseModel, Field, model_validator

from conveyor.settings import Settings
from conveyor.steps import rate_limits
from conveyor.steps.base import (
    CallEstimate,
    LlmUsage,
    StepConfig,
    StepContext,
    StepFailure,
    StepKind,
    StepResult,
)
from conveyor.steps.http import send
from conveyor.steps.llm_stream import StreamedReply, stream_completion

log = structlog.get_logger(__name__)


class ChatMessage(BaseModel):
    """One message of the conversation sent to the model."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class LlmConfig(StepConfig):
    """`llm` step configuration: a prompt (and optional system message) or full messages."""

    prompt: str | None = None
    system: str | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = Field(default=None, description="Default: the LLM_MODEL setting.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = Field(
        default=False, description="Send the reply's text as `step_tokens` run events as it comes."
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LlmConfig:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages to send."""
        if self.messages is not None:
            return [message.model_dump() for message in self.messages]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": self.prompt or ""}]


def cost_micro_usd(
    settings: Settings, model: str, prompt: int, completion: int
) -> tuple[int, int] | None:
    """(input, output) cost of the call, each rounded up to a micro-dollar; None for a model
    without a price in LLM_PRICES (the ledger then prices it from `model_prices`)."""
    price = settings.llm_prices.get(model)
    if price is None:
        return None
    return (
        math.ceil(prompt * price.input_per_million / 1_000_000),
        math.ceil(completion * price.output_per_million / 1_000_000),
    )


def provider_name(base_url: str) -> str:
    """A short provider label from the API's host (api.openai.com → openai)."""
    host = urlsplit(base_url).hostname or "unknown"
    return "openai" if host.endswith("openai.com") else host


# Framing tokens per message (role, separators) and for priming the reply: OpenAI's chat format
# spends 3-4 and 3; 8 and 8 leave room for providers that spend more.
MESSAGE_FRAMING_TOKENS = 8
REPLY_PRIMING_TOKENS = 8


def prompt_token_bound(messages: list[dict[str, str]]) -> int:
    """An upper bound of the prompt's tokens, without the model's tokenizer: byte-level BPE
    tokenizers (OpenAI's, Llama's) never make a token of less than one byte, so the UTF-8 length
    bounds the count. A few times the real count for English; a worst case must not be less."""
    return REPLY_PRIMING_TOKENS + sum(
        len(message["content"].encode()) + MESSAGE_FRAMING_TOKENS for message in messages
    )


def call_estimate(
    settings: Settings, model: str, messages: list[dict[str, str]], max_tokens: int
) -> CallEstimate:
    """The most this call can consume: the prompt's bound and the reply's cap, priced."""
    prompt = prompt_token_bound(messages)
    cost = cost_micro_usd(settings, model, prompt, max_tokens)
    return CallEstimate(
        provider=provider_name(settings.llm_base_url),
        model=model,
        prompt_tokens=prompt,
        completion_tokens=max_tokens,
        cost_micro_usd=sum(cost) if cost is not None else None,
    )


def run_llm(ctx: StepContext, config: LlmConfig) -> StepResult:
    """Call /chat/completions; the output is the reply text, and usage is captured."""
    settings = ctx.settings
    model = config.model or settings.llm_model
    body: dict[str, Any] = {"model": model, "messages": config.chat_messages()}
    if config.temperature is not None:
        body["temperature"] = config.temperature
    # Always capped: the cap is the reply's worst case, which reservations and limits count on.
    body["max_tokens"] = config.max_tokens or settings.llm_default_max_tokens
    headers = {"Idempotency-Key": f"{ctx.run_id}:{ctx.step}:{ctx.attempt}"}
    if settings.llm_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
    url = settings.llm_base_url.rstrip("/") + "/chat/completions"
    estimate = call_estimate(settings, model, body["messages"], body["max_tokens"])
    if ctx.reserve is not None:
        ctx.reserve(estimate)
    grants: list[rate_limits.Grant | None] = []
    rejected: list[int] = []

    def admit() -> None:
        # Taken as late as possible, once the HTTP client is built: the limit counts admissions,
        # the provider counts arrivals, and the gap between them is what the guarantee loses.
        grants.append(rate_limits.acquire(ctx, estimate))

    def pushback(response: httpx.Response) -> None:
        # The provider's word beats our count: its 429 or spent quota holds the key for everyone.
        if response.status_code == 429:
            rejected.append(429)
        wait = rate_limits.pushback_seconds(response)
        if wait is not None:
            rate_limits.block(ctx, grants[0], wait)

    try:
        result = _call(ctx, config, model, url, body, headers, (admit, pushback))
    except StepFailure:
        # A 429 consumed nothing at the provider: give the estimate back. Other failures (a
        # timeout, a 5xx, a cut stream) may have been generated and billed: the estimate stays.
        if rejected:
            rate_limits.settle(ctx, grants[0], 0)
        raise
    real = result.usage.prompt_tokens + result.usage.completion_tokens if result.usage else 0
    if real > 0:  # a stream without a usage chunk says 0: the estimate stays counted
        rate_limits.settle(ctx, grants[0], real)
    return result


def _call(
    ctx: StepContext,
    config: LlmConfig,
    model: str,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    hooks: tuple[Callable[[], None], Callable[[httpx.Response], None]],
) -> StepResult:
    """Make the HTTP call (streamed or not) and read its reply into the step's result."""
    settings = ctx.settings
    started = time.monotonic()
    if config.stream:
        # The final usage chunk is the only place a stream states what it cost.
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        request = httpx.Request("POST", url, json=body, headers=headers)
        streamed = stream_completion(ctx, request, hooks[1], hooks[0])
        return _streamed_result(ctx, model, streamed, round((time.monotonic() - started) * 1000))
    response = send(
        ctx,
        httpx.Request("POST", url, json=body, headers=headers),
        what="LLM",
        code="LLM_ERROR",
        on_response=hooks[1],
        before_send=hooks[0],
    )
    latency_ms = round((time.monotonic() - started) * 1000)
    try:
        reply = response.json()
        choice = reply["choices"][0]
        text = choice["message"]["content"] or ""
        usage = reply.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise StepFailure(
            f"LLM reply is not a chat completion: {exc!r}", retryable=True, code="LLM_ERROR"
        ) from exc

    request_id = response.headers.get("x-request-id") or reply.get("id")
    return _result(
        settings,
        model,
        Reply(
            text=text,
            model=str(reply.get("model") or model),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            request_id=str(request_id) if request_id else None,
        ),
    )


@dataclass(frozen=True)
class Reply:
    """A finished completion, streamed or not, as the step's output and usage are made from."""

    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    request_id: str | None


def _streamed_result(
    ctx: StepContext, model: str, streamed: StreamedReply, latency_ms: int
) -> StepResult:
    """The result of a stream read to [DONE]. Without a usage chunk (a provider that ignores
    `stream_options`) the call is recorded at 0 tokens rather than failed: another attempt would
    pay the provider again for text the client already has, and would get no usage either."""
    usage = streamed.usage or {}
    if not usage:
        log.warning("llm_stream_without_usage", run_id=str(ctx.run_id), step=ctx.step)
    try:
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
    except (TypeError, ValueError) as exc:
        raise StepFailure(
            f"LLM stream usage is not numeric: {usage!r}", retryable=True, code="LLM_ERROR"
        ) from exc
    reply = Reply(
        text=streamed.text,
        model=str(streamed.model or model),
        finish_reason=streamed.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        request_id=streamed.request_id,
    )
    return _result(ctx.settings, model, reply)


def _result(settings: Settings, model: str, reply: Reply) -> StepResult:
    """The step's output ({text, model, finish_reason}) and its priced usage."""
    cost = cost_micro_usd(settings, reply.model, reply.prompt_tokens, reply.completion_tokens)
    if cost is None:  # providers often answer with a dated variant of the requested model
        cost = cost_micro_usd(settings, model, reply.prompt_tokens, reply.completion_tokens)
    return StepResult(
        output={"text": reply.text, "model": reply.model, "finish_reason": reply.finish_reason},
        usage=LlmUsage(
            provider=provider_name(settings.llm_base_url),
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            input_cost_micro_usd=cost[0] if cost else 0,
            output_cost_micro_usd=cost[1] if cost else 0,
            latency_ms=reply.latency_ms,
            provider_request_id=reply.request_id,
            priced=cost is not None,
        ),
    )


LLM = StepKind("llm", LlmConfig, run_llm)
