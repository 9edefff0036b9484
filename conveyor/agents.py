"""The agent registry: what `POST /api/agents/invoke` can run, with each agent's input model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor.errors import InvalidInput, UnknownAgent

AgentFunction = Callable[[BaseModel], dict[str, Any]]


@dataclass(frozen=True)
class Agent:
    """A named unit of work with a validated input."""

    name: str
    description: str
    input_model: type[BaseModel]
    run: AgentFunction

    def validate_input(self, raw: dict[str, Any]) -> BaseModel:
        """Parse raw input, or raise InvalidInput naming the offending fields."""
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc, f"input for agent {self.name!r}") from exc


_REGISTRY: dict[str, Agent] = {}


def register(
    name: str, description: str, input_model: type[BaseModel]
) -> Callable[[AgentFunction], AgentFunction]:
    """Decorator that makes a function invocable as agent `name`."""

    def decorate(fn: AgentFunction) -> AgentFunction:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"agent {name!r} is registered twice; pick another name")
        _REGISTRY[name] = Agent(name, description, input_model, fn)
        return fn

    return decorate


def get_agent(name: str) -> Agent:
    """The agent called name, or UnknownAgent listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownAgent(f"unknown agent type {name!r}; known agent types: {known}") from None


def all_agents() -> list[Agent]:
    """Every registered agent, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


class EchoInput(BaseModel):
    """Anything; echo returns what it was given."""

    model_config = ConfigDict(extra="allow")

    message: str | None = Field(default=None, max_length=100_000)


@register("echo", "Returns its input unchanged: a smoke test of the whole pipeline.", EchoInput)
def echo(payload: BaseModel) -> dict[str, Any]:
    """Return the input as the output."""
    return payload.model_dump(exclude_none=True)
