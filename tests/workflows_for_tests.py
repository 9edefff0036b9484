"""Workflows that exist only in tests, declared through the public API like any user's.

A worker in another process imports this module through CONVEYOR_WORKFLOW_MODULES.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows import RetryPolicy, StepSpec, Workflow

FAST_RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.05, max_backoff_seconds=0.2)


class TopicInput(BaseModel):
    """A topic to write about."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=3, max_length=200)


class HoldInput(BaseModel):
    """Where the `http` step calls: a test server and a key it counts by."""

    model_config = ConfigDict(extra="forbid")

    server: str
    key: str


class WaitInput(BaseModel):
    """How long the waiting step waits, at most."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(10.0, gt=0, le=60)


class BigInput(BaseModel):
    """How many bytes of output to make."""

    size: int = Field(ge=1, le=10_000_000)


@steps.function("tests.wait_cooperatively")
def wait_cooperatively(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Wait, checking for a stop request as a long step should."""
    ctx.sleep(float(data["seconds"]))
    return {"waited": data["seconds"]}


@steps.function("tests.sleep_stubbornly")
def sleep_stubbornly(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Sleep without ever checking for a stop request."""
    time.sleep(float(data["seconds"]))
    return {"slept": data["seconds"]}


@steps.function("tests.big_output")
def big_output(ctx: StepContext, data: Any) -> dict[str, Any]:
    """An output of about `size` bytes."""
    return {"blob": "x" * int(data["size"])}


def python_step(name: str, function: str, **options: Any) -> StepSpec:
    """A step calling one of the functions above."""
    return StepSpec(name=name, kind="python", config={"function": function}, **options)


workflows.define(
    Workflow(
        name="write_brief",
        description="Outline a topic with the model, then draft from the outline.",
        input_model=TopicInput,
        steps=[
            StepSpec(
                name="outline",
                kind="llm",
                config={"prompt": "outline {{ inputs.topic }}"},
                retry=FAST_RETRY,
            ),
            StepSpec(
                name="draft",
                kind="llm",
                config={"prompt": "draft from {{ steps.outline.output.text }}"},
                retry=FAST_RETRY,
            ),
            StepSpec(
                name="package",
                kind="transform",
                config={
                    "output": {
                        "topic": "{{ inputs.topic }}",
                        "brief": "{{ steps.draft.output.text }}",
                    }
                },
            ),
        ],
    )
)

workflows.define(
    Workflow(
        name="llm_hold_llm",
        description="A model call, an HTTP call the test server holds, another model call.",
        input_model=HoldInput,
        steps=[
            StepSpec(name="first", kind="llm", config={"prompt": "first {{ inputs.key }}"}),
            StepSpec(
                name="hold",
                kind="http",
                config={"url": "{{ inputs.server }}/hold/{{ inputs.key }}"},
                timeout_seconds=60,
            ),
            StepSpec(name="last", kind="llm", config={"prompt": "last {{ inputs.key }}"}),
        ],
    )
)

workflows.define(
    Workflow(
        name="wait_then_call",
        description="A long cooperative step, then a model call.",
        input_model=WaitInput,
        steps=[
            python_step(
                "wait",
                "tests.wait_cooperatively",
                timeout_seconds=60,
            ),
            StepSpec(name="call", kind="llm", config={"prompt": "after the wait"}),
        ],
    )
)

workflows.define(
    Workflow(
        name="stubborn_sleep",
        description="A step that outlives its timeout and ignores stop requests.",
        input_model=WaitInput,
        steps=[
            python_step(
                "sleep",
                "tests.sleep_stubbornly",
                timeout_seconds=0.3,
                retry=RetryPolicy(max_attempts=2, backoff_seconds=0.05),
            )
        ],
    )
)

workflows.define(
    Workflow(
        name="big_output",
        description="One step with an output of a chosen size.",
        input_model=BigInput,
        steps=[python_step("make", "tests.big_output")],
    )
)

workflows.define(
    Workflow(
        name="fan_in",
        description="Two independent model calls and a step that needs both (a DAG).",
        input_model=TopicInput,
        steps=[
            StepSpec(
                name="combine",
                kind="transform",
                depends_on=["pros", "cons"],
                config={"output": "{{ steps.pros.output.text }} | {{ steps.cons.output.text }}"},
            ),
            StepSpec(
                name="pros",
                kind="llm",
                depends_on=[],
                config={"prompt": "pros of {{ inputs.topic }}"},
            ),
            StepSpec(
                name="cons",
                kind="llm",
                depends_on=[],
                config={"prompt": "cons of {{ inputs.topic }}"},
            ),
        ],
    )
)

workflows.define(
    Workflow(
        name="outlives_the_run",
        description="A cooperative wait longer than the whole run may take.",
        input_model=WaitInput,
        timeout_seconds=0.5,
        steps=[
            python_step(
                "wait",
                "tests.wait_cooperatively",
                timeout_seconds=60,
            )
        ],
    )
)
