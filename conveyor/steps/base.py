"""What every step kind shares: the context it runs in, its result, and how it fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from conveyor.settings import Settings


class StepConfig(BaseModel):
    """Base of every step kind's configuration: unknown keys are a definition error."""

    model_config = ConfigDict(extra="forbid")


class StepFailure(Exception):
    """A step attempt failed; `retryable` says whether another attempt may succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str = "STEP_FAILED",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
        self.retry_after = retry_after


class StepStopped(Exception):
    """The engine asked the step to stop (cancel, timeout or lost lease); raised by ctx.check()."""


@dataclass(frozen=True)
class LlmUsage:
    """What one model call consumed, as the usage ledger records it."""

    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    input_cost_micro_usd: int
    output_cost_micro_usd: int
    latency_ms: int
    provider_request_id: str | None
    priced: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form, stored on the step."""
        return {
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "input_cost_micro_usd": self.input_cost_micro_usd,
            "output_cost_micro_usd": self.output_cost_micro_usd,
            "cost_micro_usd": self.input_cost_micro_usd + self.output_cost_micro_usd,
            "latency_ms": self.latency_ms,
            "provider_request_id": self.provider_request_id,
            "priced": self.priced,
        }


@dataclass(frozen=True)
class CallEstimate:
    """The most a model call can consume, known before it is made: what a credit reservation
    holds and what a rate limit is asked for. Corrected by the call's LlmUsage afterwards."""

    provider: str
    model: str
    prompt_tokens: int  # an upper bound (llm.prompt_token_bound)
    completion_tokens: int  # the `max_tokens` sent with the request
    # At LLM_PRICES; None for a model without one there (the ledger prices it from model_prices).
    cost_micro_usd: int | None

    @property
    def total_tokens(self) -> int:
        """Prompt and reply tokens together."""
        return self.prompt_tokens + self.completion_tokens


class StepDeferred(Exception):
    """The step cannot start yet (its credits or its rate limit): the engine gives its attempt
    back, parks the run as `waiting` for `reason`, and runs the step again when woken: credits
    arrive, or `until` passes. `detail` goes into the step's `wait` and its event."""

    def __init__(
        self,
        reason: Literal["credits", "rate_limit"],
        *,
        until: datetime | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until
        self.detail = detail or {}


@dataclass
class StepResult:
    """A step's JSON output and, for model calls, what it consumed."""

    output: Any
    usage: LlmUsage | None = None


@dataclass
class StepContext:
    """Where a step attempt runs: its run, its deadline, and the engine's stop signal."""

    run_id: UUID
    user_id: UUID
    step: str
    attempt: int
    settings: Settings
    deadline: float  # time.monotonic() by which the attempt must end
    stop: threading.Event = field(default_factory=threading.Event)
    # Appends a stored run event (`step_tokens`, ...) while the attempt runs; fenced by the run's
    # attempt, so a worker that lost the run writes nothing. None outside the engine.
    emit: Callable[[str, dict[str, Any]], None] | None = None
    # Holds a model call's worst case against the user's credits and quota before it is made;
    # raises StepDeferred("credits") when they cannot cover it. None outside the engine.
    reserve: Callable[[CallEstimate], None] | None = None

    def remaining(self) -> float:
        """Seconds left before the step times out (never below a small floor)."""
        return max(0.01, self.deadline - time.monotonic())

    def stopped(self) -> bool:
        """True once the engine wants this attempt to end (cancel, timeout, lost lease)."""
        return self.stop.is_set()

    def check(self) -> None:
        """Raise StepStopped if the engine wants this attempt to end; long steps call it often."""
        if self.stop.is_set():
            raise StepStopped(self.step)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (with StepStopped) when asked to stop."""
        if self.stop.wait(seconds):
            raise StepStopped(self.step)


@dataclass(frozen=True)
class StepKind:
    """A kind of step: how its configuration is checked and how it runs."""

    name: str
    config_model: type[StepConfig]
    run: Callable[[StepContext, Any], StepResult]
    # Pure, fast kinds run inline; the rest run in a supervised thread that can be abandoned.
    inline: bool = False
