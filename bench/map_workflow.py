"""Map workflows for bench/map_fanout.py: a `python` step listing N ints, then a `map` of no-op
items over it, one workflow per (sub-step kind, concurrency). The workers import this module
through CONVEYOR_WORKFLOW_MODULES; the bench process imports it to submit and to profile."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.steps.map import MAX_ITEMS
from conveyor.workflows import StepSpec, Workflow

LIST_FUNCTION = "bench.map_numbers"
ITEM_FUNCTION = "bench.map_noop"
CONCURRENCIES = (1, 2, 4, 8, 16)
SUB_STEPS = ("python", "transform")
MAP_POSITION = 1  # the map is the second step


class MapInput(BaseModel):
    """How many items the list step produces."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=MAX_ITEMS)


@steps.function(LIST_FUNCTION)
def numbers(ctx: StepContext, data: Any) -> list[int]:
    """0 .. count-1: the list the map goes over."""
    return list(range(int(data["count"])))


@steps.function(ITEM_FUNCTION)
def noop(ctx: StepContext, data: Any) -> None:
    """Do nothing (the item's output is null)."""


def sub_step(kind: str) -> dict[str, Any]:
    """The no-op item: a python function (run in the supervised step thread, as user code is) or
    a transform echoing the item (run inline on the lane's thread)."""
    if kind == "python":
        return {"kind": "python", "config": {"function": ITEM_FUNCTION, "with": "{{ item }}"}}
    return {"kind": "transform", "config": {"output": "{{ item }}"}}


def name_of(kind: str, concurrency: int) -> str:
    """The registered name of the map workflow with this sub-step kind and concurrency."""
    return f"bench_map_{kind}_c{concurrency}"


def map_workflow(kind: str, concurrency: int) -> Workflow:
    """List N ints, then map the no-op sub-step over them with `concurrency` lanes."""
    return workflows.define(
        Workflow(
            name=name_of(kind, concurrency),
            description=f"A map of no-op {kind} items, {concurrency} lane(s): the bench's probe.",
            input_model=MapInput,
            steps=[
                StepSpec(
                    name="list",
                    kind="python",
                    config={"function": LIST_FUNCTION, "with": {"count": "{{ inputs.count }}"}},
                ),
                StepSpec(
                    name="each",
                    kind="map",
                    config={
                        "over": "{{ steps.list.output }}",
                        "concurrency": concurrency,
                        "step": sub_step(kind),
                    },
                ),
            ],
        )
    )


MAP_WORKFLOWS = {
    (kind, concurrency): map_workflow(kind, concurrency)
    for kind in SUB_STEPS
    for concurrency in CONCURRENCIES
}
