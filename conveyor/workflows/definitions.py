"""Workflow definitions and their registry: named steps (a list or a DAG) with a typed input.

Definitions are checked when declared, so a typo fails at start-up with how to fix it, not in
the middle of someone's run.
"""

from __future__ import annotations

import random
from graphlib import CycleError, TopologicalSorter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from conveyor import steps
from conveyor.errors import InvalidInput, UnknownAgent, UnknownWorkflow
from conveyor.workflows import templates

WorkflowKind = Literal["workflow", "agent"]
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class RetryPolicy(BaseModel):
    """How often a failing step is tried, and how long to wait in between."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(3, ge=1, le=50)
    backoff_seconds: float = Field(1.0, ge=0, le=3600)
    max_backoff_seconds: float = Field(60.0, ge=0, le=3600)

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Exponential backoff with equal jitter; a server's Retry-After is a floor."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (failed_attempts - 1))
        # Jitter spreads the retries of many runs that failed together (S311: not crypto).
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_seconds))
        return delay


class StepSpec(BaseModel):
    """One step: its kind, its (templated) configuration, what it needs, its retry and timeout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)
    # None: after the previous step (a plain list); [] : no prerequisite.
    depends_on: list[str] | None = None
    retry: RetryPolicy = RetryPolicy()
    timeout_seconds: float = Field(60.0, gt=0, le=24 * 3600)

    @model_validator(mode="after")
    def _known_kind_and_config(self) -> StepSpec:
        kind = steps.KINDS.get(self.kind)
        if kind is None:
            raise ValueError(
                f"step {self.name!r}: unknown kind {self.kind!r}; use one of {sorted(steps.KINDS)}"
            )
        templates.check_syntax(self.config)
        try:
            # Templated values are strings until run time; the shape is checked now.
            checked = kind.config_model.model_validate(self.config)
        except ValidationError as exc:
            raise ValueError(f"step {self.name!r} ({self.kind}) config: {exc}") from exc
        # Defaults filled in before templates render (a python step's `with: "{{ inputs }}"`).
        object.__setattr__(
            self, "config", checked.model_dump(by_alias=True, exclude_none=True, mode="json")
        )
        return self


class KeySpec(BaseModel):
    """What the flow-control specs share: a key, a template over the submit (`inputs`,
    `user_id`, `session_id`, `metadata`) checked when declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _key_parses(self) -> KeySpec:
        templates.check_syntax(self.key)
        return self


class ConcurrencySpec(KeySpec):
    """`concurrency: {key, limit}`: at most `limit` runs per rendered `key` in flight."""

    limit: int = Field(ge=1, le=10_000)


class SingletonSpec(KeySpec):
    """`singleton: {key, policy}`: one run in flight per rendered key; a new one is dropped
    (409), queued behind it, or replaces it (the old one is cancelled)."""

    policy: Literal["drop", "queue", "replace"] = "queue"


class DebounceSpec(KeySpec):
    """`debounce: {key, seconds}`: only the last submit per rendered key within `seconds` runs."""

    seconds: float = Field(gt=0, le=3600)


class Workflow(BaseModel):
    """A named workflow (or agent type: a workflow `invoke` can run) and its steps in run order."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str
    input_model: type[BaseModel]
    steps: list[StepSpec] = Field(min_length=1)
    kind: WorkflowKind = "workflow"
    # The run's output; default: the last step's output.
    output: Any = None
    timeout_seconds: float = Field(3600.0, gt=0, le=7 * 24 * 3600)
    # Flow control (issue 24): runs held in Postgres until conveyor_dispatch_runs sends them.
    concurrency: ConcurrencySpec | None = None
    # 0-9, higher sooner among held runs; None: not held for priority (ordered as 5).
    priority: int | None = Field(None, ge=0, le=9)
    singleton: SingletonSpec | None = None
    debounce: DebounceSpec | None = None
    # Each step's prerequisites, resolved (`depends_on` None means the step declared before it).
    _needs: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _one_flow_key(self) -> Workflow:
        if sum(spec is not None for spec in (self.concurrency, self.singleton, self.debounce)) > 1:
            raise ValueError(
                f"workflow {self.name!r}: declare at most one of concurrency, singleton and "
                "debounce (a singleton is a concurrency key with limit 1)"
            )
        return self

    @model_validator(mode="after")
    def _dag_in_run_order(self) -> Workflow:
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow {self.name!r}: step names must be unique, got {names}")
        graph: dict[str, list[str]] = {}
        for index, step in enumerate(self.steps):
            needs = step.depends_on if step.depends_on is not None else names[index - 1 : index]
            unknown = set(needs) - set(names)
            if unknown:
                raise ValueError(
                    f"workflow {self.name!r}: step {step.name!r} "
                    f"depends on unknown {sorted(unknown)}"
                )
            graph[step.name] = needs
        try:
            order = list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            raise ValueError(
                f"workflow {self.name!r}: steps depend on each other in a cycle: {exc.args[1]}"
            ) from exc
        templates.check_syntax(self.output)
        # Steps are stored in an order that respects every dependency (a chain runs in it; ready
        # branches run side by side, conveyor/runs/fanout.py); the model is frozen for callers,
        # so the validator stores that order directly.
        by_name = {step.name: step for step in self.steps}
        object.__setattr__(self, "steps", [by_name[name] for name in order])
        self._needs = {name: tuple(needs) for name, needs in graph.items()}
        return self

    def needs(self, step: str) -> tuple[str, ...]:
        """The steps `step` waits for."""
        return self._needs[step]

    def validate_input(self, raw: dict[str, Any]) -> BaseModel:
        """Parse raw input, or InvalidInput naming the offending fields."""
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput.from_validation(
                exc, f"inputs for {self.kind} {self.name!r}"
            ) from exc

    def step_rows(self) -> list[tuple[str, str]]:
        """(name, kind) of each step in run order: the rows a new run starts with."""
        return [(step.name, step.kind) for step in self.steps]

    def describe(self) -> dict[str, Any]:
        """What `GET /api/workflows` shows: id, description, input schema, steps."""
        return {
            "workflow_id": self.name,
            "description": self.description,
            "input_schema": self.input_model.model_json_schema(),
            "steps": [{"name": step.name, "kind": step.kind} for step in self.steps],
        }


_REGISTRY: dict[str, Workflow] = {}


def define(workflow: Workflow) -> Workflow:
    """Register a workflow; the same name twice is an error unless it is the same definition."""
    existing = _REGISTRY.get(workflow.name)
    if existing is not None and not same_definition(existing, workflow):
        raise ValueError(f"{workflow.kind} {workflow.name!r} is defined twice; rename one of them")
    _REGISTRY[workflow.name] = workflow
    return workflow


def same_definition(a: Workflow, b: Workflow) -> bool:
    """Equal in everything a run sees (a file loaded twice builds two equal input models)."""
    return (
        a.model_dump(exclude={"input_model"}) == b.model_dump(exclude={"input_model"})
        and a.input_model.model_json_schema() == b.input_model.model_json_schema()
    )


def get(name: str) -> Workflow:
    """Any registered definition (workflow or agent type) by name; the engine's look-up."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownWorkflow(f"unknown workflow {name!r}; GET /api/workflows lists them") from None


def get_workflow(name: str) -> Workflow:
    """The workflow called name, or UnknownWorkflow (404)."""
    found = _of_kind(name, "workflow")
    if found is None:
        raise UnknownWorkflow(f"unknown workflow {name!r}; known workflows: {_names('workflow')}")
    return found


def get_agent(name: str) -> Workflow:
    """The agent type called name, or UnknownAgent."""
    found = _of_kind(name, "agent")
    if found is None:
        raise UnknownAgent(f"unknown agent type {name!r}; known agent types: {_names('agent')}")
    return found


def _of_kind(name: str, kind: WorkflowKind) -> Workflow | None:
    found = _REGISTRY.get(name)
    return found if found is not None and found.kind == kind else None


def _names(kind: WorkflowKind) -> str:
    return ", ".join(w.name for w in all_of(kind)) or "none"


def all_of(kind: WorkflowKind) -> list[Workflow]:
    """Every registered definition of a kind, by name."""
    return sorted((w for w in _REGISTRY.values() if w.kind == kind), key=lambda w: w.name)
