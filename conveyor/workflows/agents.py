"""Agent types: what `POST /api/agents/invoke` runs. Each is a workflow, usually of one step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows.definitions import RetryPolicy, StepSpec, Workflow

AgentFunction = Callable[[BaseModel], dict[str, Any]]

# An agent's own exception is usually a bug, not a blip: one attempt unless the agent says more.
SINGLE_ATTEMPT = RetryPolicy(max_attempts=1)


def register(
    name: str,
    description: str,
    input_model: type[BaseModel],
    *,
    retry: RetryPolicy = SINGLE_ATTEMPT,
    timeout_seconds: float = 300.0,
) -> Callable[[AgentFunction], AgentFunction]:
    """Decorator that makes fn(validated input) -> dict invocable as agent type `name`."""

    def decorate(fn: AgentFunction) -> AgentFunction:
        def call(ctx: StepContext, data: Any) -> Any:
            return fn(input_model.model_validate(data))

        steps.function(f"agent.{name}")(call)
        workflows.define(
            Workflow(
                name=name,
                description=description,
                input_model=input_model,
                kind="agent",
                steps=[
                    StepSpec(
                        name=name,
                        kind="python",
                        config={"function": f"agent.{name}"},
                        retry=retry,
                        timeout_seconds=timeout_seconds,
                    )
                ],
            )
        )
        return fn

    return decorate
