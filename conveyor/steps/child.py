"""The `workflow` step: start another workflow as a child run of this one, for the same user.
Awaited (`wait: true`), the run waits without a worker until the child ends and the child's
output becomes the step's; detached, the step completes at once with the child's id. The
attempt raises StepSuspended: conveyor/runs/waits.py starts the child in the suspension's
transaction (conveyor/runs/children.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from conveyor.steps.base import StepConfig, StepContext, StepKind, StepResult
from conveyor.steps.wait import StepSuspended, WaitRequest

CHILD = "workflow"


class ChildConfig(StepConfig):
    """`workflow` configuration: the child's workflow, its inputs (templates rendered against
    this run), and whether this run waits for it."""

    workflow: str = Field(min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    wait: bool = True


def run_child(ctx: StepContext, config: ChildConfig) -> StepResult:
    """Ask the engine to start the child (and, when awaited, to wait for it)."""
    raise StepSuspended(
        WaitRequest(
            "child", workflow=config.workflow, inputs=config.inputs, detached=not config.wait
        )
    )


CHILD_KIND = StepKind(CHILD, ChildConfig, run_child, inline=True)
