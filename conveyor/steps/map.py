"""The `map` step: one sub-step per item of a list from an earlier output, on several workers at
once (conveyor/runs/fanout.py dispatches the items, conveyor/runs/lanes.py runs them). Its own
attempt never runs here: the engine recognises the kind and fans out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conveyor.steps.base import StepConfig, StepContext, StepFailure, StepKind, StepResult

MAP = "map"
MAX_ITEMS = 10_000
MAX_CONCURRENCY = 100
# The kinds that run as a branch beside others or as a map's item: they finish within one
# attempt. Waits, approvals and child runs suspend the run and stay in the coordinator.
PARALLEL_KINDS = frozenset({"llm", "http", "python", "transform"})
# A map's item may also be a child workflow (awaited): the item waits for the child run.
CHILD_ITEM = "workflow"
ITEM_KINDS = PARALLEL_KINDS | {CHILD_ITEM}


class ItemRetry(BaseModel):
    """How often one item's sub-step is tried (as a step's retry policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(3, ge=1, le=50)
    backoff_seconds: float = Field(1.0, ge=0, le=3600)
    max_backoff_seconds: float = Field(60.0, ge=0, le=3600)


class SubStep(BaseModel):
    """What runs once per item: a step kind (or `workflow`, a child run per item) and its
    config, rendered with `item` and `index`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    config: dict[str, Any] = Field(default_factory=dict)
    retry: ItemRetry = ItemRetry()
    timeout_seconds: float = Field(60.0, gt=0, le=24 * 3600)


class MapConfig(StepConfig):
    """`map` configuration: the list (`over`, usually a template), the sub-step, how many items
    run at once, and whether the first failure fails the step or failures are collected."""

    over: str | list[Any]
    step: SubStep
    concurrency: int = Field(10, ge=1, le=MAX_CONCURRENCY)
    on_failure: Literal["fail_fast", "collect"] = "fail_fast"

    @model_validator(mode="after")
    def _runnable_sub_step(self) -> MapConfig:
        # Imported here: the registry imports this module.
        from conveyor.steps import KINDS

        if self.step.kind not in ITEM_KINDS:
            raise ValueError(f"a map's step kind must be one of {sorted(ITEM_KINDS)}")
        checked = KINDS[self.step.kind].config_model.model_validate(self.step.config)
        if getattr(checked, "wait", True) is not True:
            raise ValueError("a map's child workflows are awaited: leave out `wait: false`")
        return self


def run_map(ctx: StepContext, config: MapConfig) -> StepResult:
    """Never called: the engine fans a map out instead of running it as one attempt."""
    raise StepFailure("a map step runs through the engine's fan-out", retryable=False)


MAP_KIND = StepKind(MAP, MapConfig, run_map, inline=True)


def items_of(value: Any) -> list[Any]:
    """The rendered `over`: a list of at most MAX_ITEMS, else a StepFailure saying what came."""
    if not isinstance(value, list):
        raise StepFailure(
            f"`over` must render to a list, got {type(value).__name__}",
            retryable=False,
            code="INVALID_STEP_CONFIG",
        )
    if len(value) > MAX_ITEMS:
        raise StepFailure(
            f"`over` has {len(value)} items; a map takes at most {MAX_ITEMS}",
            retryable=False,
            code="MAP_TOO_LARGE",
        )
    return value
