"""The workflow bench/stream_first_token.py submits: one streamed `llm` step. Its web and worker
processes import this module through CONVEYOR_WORKFLOW_MODULES."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from conveyor import workflows
from conveyor.workflows import StepSpec, Workflow

NAME = "bench_stream"


class PromptInput(BaseModel):
    """What the streamed step asks the model."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200)


workflows.define(
    Workflow(
        name=NAME,
        description="One model call whose reply is streamed as step_tokens events.",
        input_model=PromptInput,
        steps=[
            StepSpec(
                name="reply", kind="llm", config={"prompt": "{{ inputs.prompt }}", "stream": True}
            )
        ],
    )
)
