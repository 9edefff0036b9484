"""The workflow the chaos suite submits: three short steps, so faults land mid-run.

Web and worker processes import this module through CONVEYOR_WORKFLOW_MODULES.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows.definitions import RetryPolicy, StepSpec, Workflow

WORKFLOW = "chaos_three_steps"
STEP_SECONDS = 0.15


class ChaosInput(BaseModel):
    """Which submission this is, echoed back by every step."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=0)


@steps.function("chaos.pause")
def pause(ctx: StepContext, data: Any) -> dict[str, Any]:
    """A step that takes a moment and checks for a stop request while it waits."""
    ctx.sleep(STEP_SECONDS)
    return {"n": data["n"]}


# A step interrupted by a killed worker counts as an attempt; several faults may hit one run.
RETRY = RetryPolicy(max_attempts=6, backoff_seconds=0.2, max_backoff_seconds=1)

workflows.define(
    Workflow(
        name=WORKFLOW,
        description="Three pauses in a row (chaos suite).",
        input_model=ChaosInput,
        steps=[
            StepSpec(name=name, kind="python", config={"function": "chaos.pause"}, retry=RETRY)
            for name in ("first", "second", "third")
        ],
    )
)
