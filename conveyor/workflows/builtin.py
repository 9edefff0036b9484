"""The agent types every installation has: echo, chat_agent, summarize."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import workflows
from conveyor.workflows import agents
from conveyor.workflows.definitions import RetryPolicy, StepSpec, Workflow


class EchoInput(BaseModel):
    """Anything; echo returns what it was given."""

    model_config = ConfigDict(extra="allow")

    message: str | None = Field(default=None, max_length=100_000)


@agents.register(
    "echo", "Returns its input unchanged: a smoke test of the whole pipeline.", EchoInput
)
def echo(payload: BaseModel) -> dict[str, Any]:
    """Return the input as the output."""
    return payload.model_dump(exclude_none=True)


class ChatInput(BaseModel):
    """One user message, with an optional system prompt and model."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=100_000)
    system: str = Field("You are a helpful assistant.", max_length=20_000)
    model: str | None = Field(default=None, max_length=200)


class SummarizeInput(BaseModel):
    """The text to summarise and the length wanted."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=400_000)
    max_words: int = Field(100, ge=5, le=2_000)
    model: str | None = Field(default=None, max_length=200)


# Model calls fail transiently (429, 5xx): three attempts with backoff.
LLM_RETRY = RetryPolicy(max_attempts=3, backoff_seconds=2.0, max_backoff_seconds=30.0)

workflows.define(
    Workflow(
        name="chat_agent",
        description="One chat completion: the reply to `message` under `system`.",
        input_model=ChatInput,
        kind="agent",
        steps=[
            StepSpec(
                name="reply",
                kind="llm",
                config={
                    "system": "{{ inputs.system }}",
                    "prompt": "{{ inputs.message }}",
                    "model": "{{ inputs.model or '' }}",
                },
                retry=LLM_RETRY,
                timeout_seconds=120,
            )
        ],
    )
)

workflows.define(
    Workflow(
        name="summarize",
        description="Summarises `text` in at most `max_words` words.",
        input_model=SummarizeInput,
        kind="agent",
        steps=[
            StepSpec(
                name="summary",
                kind="llm",
                config={
                    "system": "You write faithful, concise summaries.",
                    "prompt": "Summarise in at most {{ inputs.max_words }} words:\n\n"
                    "{{ inputs.text }}",
                    "model": "{{ inputs.model or '' }}",
                },
                retry=LLM_RETRY,
                timeout_seconds=120,
            )
        ],
    )
)
