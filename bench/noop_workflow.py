"""No-op workflows for the bench: 1 and 3 `python` steps that do nothing, so what a run costs is
Conveyor's own overhead. The worker imports this module through CONVEYOR_WORKFLOW_MODULES."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows import StepSpec, Workflow

NOOP_FUNCTION = "bench.noop"


class NoInput(BaseModel):
    """Nothing."""

    model_config = ConfigDict(extra="forbid")


@steps.function(NOOP_FUNCTION)
def noop(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Do nothing."""
    return {}


def noop_workflow(name: str, step_names: list[str]) -> Workflow:
    """A workflow of no-op python steps, one after another."""
    return workflows.define(
        Workflow(
            name=name,
            description=f"{len(step_names)} no-op python step(s): the bench's overhead probe.",
            input_model=NoInput,
            steps=[
                StepSpec(name=step, kind="python", config={"function": NOOP_FUNCTION})
                for step in step_names
            ],
        )
    )


NOOP1 = noop_workflow("bench_noop1", ["a"])
NOOP3 = noop_workflow("bench_noop3", ["a", "b", "c"])
