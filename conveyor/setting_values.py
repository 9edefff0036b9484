"""The structured values some settings hold: model prices, LLM rate limits, Stripe prices."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class ModelPrice(BaseModel):
    """What one model costs, in micro-USD per million tokens (integers: money is never a float)."""

    input_per_million: int = Field(ge=0)
    output_per_million: int = Field(ge=0)


class LlmRateLimit(BaseModel):
    """A global limit on model calls a window (LLM_RATE_LIMITS values); None: not limited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    per_user: bool = False  # one budget per user (tenant) instead of one for everyone


class StripePrice(BaseModel):
    """What a Stripe price sells: a plan (a subscription) or a pack of credits (one payment)."""

    plan: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    credits: int | None = Field(default=None, gt=0, le=10**12)

    @model_validator(mode="after")
    def _one_of(self) -> StripePrice:
        if (self.plan is None) == (self.credits is None):
            raise ValueError('a Stripe price sells either {"plan": ...} or {"credits": ...}')
        return self

    @property
    def mode(self) -> Literal["subscription", "payment"]:
        """The checkout mode that sells this price."""
        return "subscription" if self.plan is not None else "payment"


# List prices of common models; override or extend with LLM_PRICES (JSON) for yours.
DEFAULT_LLM_PRICES = {
    "gpt-4o-mini": ModelPrice(input_per_million=150_000, output_per_million=600_000),
    "gpt-4o": ModelPrice(input_per_million=2_500_000, output_per_million=10_000_000),
    "gpt-4.1-mini": ModelPrice(input_per_million=400_000, output_per_million=1_600_000),
    "gpt-4.1": ModelPrice(input_per_million=2_000_000, output_per_million=8_000_000),
}
