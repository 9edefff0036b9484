"""The `transform` step: shape earlier outputs into the next input with templates, nothing else."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from conveyor.steps.base import StepConfig, StepContext, StepKind, StepResult


class TransformConfig(StepConfig):
    """`transform` step configuration: `output` is rendered and becomes the step's output."""

    output: Any = Field(description="Any JSON value; strings may be templates.")


def run_transform(ctx: StepContext, config: TransformConfig) -> StepResult:
    """The rendered `output` (the engine renders templates before calling a step)."""
    return StepResult(config.output)


TRANSFORM = StepKind("transform", TransformConfig, run_transform, inline=True)
