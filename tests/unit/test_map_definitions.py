"""A `map` step is checked when declared, and a definition says whether it can fan out."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from conveyor.runs.fanout import may_fan_out
from conveyor.steps import StepFailure
from conveyor.steps.map import MAX_ITEMS, items_of
from conveyor.workflows.definitions import StepSpec, Workflow


class NoInput(BaseModel):
    """Nothing."""


def map_step(**config: Any) -> StepSpec:
    return StepSpec(
        name="each",
        kind="map",
        config={
            "over": "{{ inputs }}",
            "step": {"kind": "transform", "config": {"output": "{{ item }}"}},
            **config,
        },
    )


def flow(*steps: StepSpec) -> Workflow:
    return Workflow(name="flow", description="", input_model=NoInput, steps=list(steps))


def transform(name: str, depends_on: list[str] | None = None) -> StepSpec:
    return StepSpec(name=name, kind="transform", config={"output": 1}, depends_on=depends_on)


def test_a_map_of_a_wait_is_refused_naming_the_kinds_it_may_run() -> None:
    with pytest.raises(ValidationError, match=r"must be one of \[.http., .llm., .python."):
        map_step(step={"kind": "sleep", "config": {"seconds": 1}})


def test_a_map_of_a_map_is_refused() -> None:
    with pytest.raises(ValidationError, match="a map's step kind must be one of"):
        map_step(step={"kind": "map", "config": {}})


def test_the_sub_steps_config_is_checked_for_its_kind() -> None:
    with pytest.raises(ValidationError, match="prompt"):
        map_step(step={"kind": "llm", "config": {"temperature": 1}})


def test_concurrency_is_bounded() -> None:
    with pytest.raises(ValidationError, match="concurrency"):
        map_step(concurrency=101)


def test_the_list_may_hold_at_most_ten_thousand_items() -> None:
    assert len(items_of(list(range(MAX_ITEMS)))) == MAX_ITEMS
    with pytest.raises(StepFailure, match="at most 10000"):
        items_of(list(range(MAX_ITEMS + 1)))


def test_a_value_that_is_not_a_list_is_a_step_failure_naming_its_type() -> None:
    with pytest.raises(StepFailure, match="got dict"):
        items_of({"a": 1})


def test_a_plain_list_of_steps_never_fans_out() -> None:
    assert not may_fan_out(flow(transform("a"), transform("b"), transform("c")))


def test_steps_that_share_a_prerequisite_may_fan_out() -> None:
    assert may_fan_out(flow(transform("a"), transform("b", ["a"]), transform("c", ["a"])))


def test_a_map_may_fan_out() -> None:
    assert may_fan_out(flow(transform("a"), map_step()))


def test_a_map_may_start_a_child_workflow_per_item() -> None:
    step = map_step(step={"kind": "workflow", "config": {"workflow": "w", "inputs": {}}})

    assert step.config["step"]["kind"] == "workflow"


def test_a_maps_child_workflows_are_awaited() -> None:
    with pytest.raises(ValidationError, match="awaited"):
        map_step(step={"kind": "workflow", "config": {"workflow": "w", "wait": False}})
