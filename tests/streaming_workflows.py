"""Workflows with a streamed `llm` step, for tests/acceptance/test_llm_streaming.py and the bench.

A worker in another process imports this module through CONVEYOR_WORKFLOW_MODULES."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from conveyor import workflows
from conveyor.workflows import RetryPolicy, StepSpec, Workflow

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.05, max_backoff_seconds=0.2)
MODULES = "tests.workflows_for_tests,tests.streaming_workflows"


class PromptInput(BaseModel):
    """What the streamed step asks the model."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200)


workflows.define(
    Workflow(
        name="stream_reply",
        description="One model call whose reply is streamed as step_tokens events.",
        input_model=PromptInput,
        steps=[
            StepSpec(
                name="reply",
                kind="llm",
                config={"prompt": "{{ inputs.prompt }}", "stream": True},
                retry=FAST_RETRY,
            ),
        ],
    )
)

workflows.define(
    Workflow(
        name="stream_branches",
        description="Two streamed model calls side by side, then a step that needs both.",
        input_model=PromptInput,
        steps=[
            StepSpec(
                name="pros",
                kind="llm",
                depends_on=[],
                config={"prompt": "pros {{ inputs.prompt }}", "stream": True},
            ),
            StepSpec(
                name="cons",
                kind="llm",
                depends_on=[],
                config={"prompt": "cons {{ inputs.prompt }}", "stream": True},
            ),
            StepSpec(
                name="both",
                kind="transform",
                depends_on=["pros", "cons"],
                config={"output": "{{ steps.pros.output.text }} | {{ steps.cons.output.text }}"},
            ),
        ],
    )
)
