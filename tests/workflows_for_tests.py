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
        name="cooperative_wait",
        description="One long cooperative step: a run that keeps its worker busy.",
        input_model=WaitInput,
        steps=[python_step("wait", "tests.wait_cooperatively", timeout_seconds=60)],
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


class MaybeHoldInput(BaseModel):
    """Where the `http` step calls, the key the test server counts by, and whether it holds."""

    model_config = ConfigDict(extra="forbid")

    server: str
    key: str
    hold: bool = False


workflows.define(
    Workflow(
        name="call_maybe_hold_call",
        description="A model call, an HTTP call the test server holds if asked, a model call.",
        input_model=MaybeHoldInput,
        steps=[
            StepSpec(name="first", kind="llm", config={"prompt": "first {{ inputs.key }}"}),
            StepSpec(
                name="maybe_hold",
                kind="http",
                config={
                    "url": "{{ inputs.server }}/{{ 'hold' if inputs.hold else 'pass' }}/"
                    "{{ inputs.key }}"
                },
                timeout_seconds=60,
            ),
            StepSpec(name="last", kind="llm", config={"prompt": "last {{ inputs.key }}"}),
        ],
    )
)

workflows.define(
    Workflow(
        name="big_then_measure",
        description="A step with a large (stored) output, then a step that measures it.",
        input_model=BigInput,
        steps=[
            python_step("make", "tests.big_output"),
            StepSpec(
                name="measure",
                kind="transform",
                config={"output": {"length": "{{ steps.make.output.blob | length }}"}},
            ),
        ],
    )
)


class NapInput(BaseModel):
    """How long the `nap` step sleeps."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=30 * 24 * 3600)


class ApprovalInput(BaseModel):
    """Which ticket a signal must name, and how long to wait for it."""

    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=1, max_length=100)
    timeout: float = Field(3600.0, gt=0, le=30 * 24 * 3600)


@steps.function("tests.note")
def note(ctx: StepContext, data: Any) -> dict[str, Any]:
    """A step that records which attempt ran it."""
    return {"attempt": ctx.attempt}


def nap_workflow(name: str, *, timeout_seconds: float) -> Workflow:
    """A step, a durable sleep of `inputs.seconds`, a step reading the sleep's output."""
    return Workflow(
        name=name,
        description="A step, a durable sleep, another step.",
        input_model=NapInput,
        timeout_seconds=timeout_seconds,
        steps=[
            python_step("before", "tests.note"),
            StepSpec(name="nap", kind="sleep", config={"seconds": "{{ inputs.seconds }}"}),
            StepSpec(
                name="after",
                kind="transform",
                config={"output": {"slept_until": "{{ steps.nap.output.wake_at }}"}},
            ),
        ],
    )


workflows.define(nap_workflow("nap", timeout_seconds=60))
# The whole run may execute for 1.5 s: a longer sleep must not count against it.
workflows.define(nap_workflow("nap_in_a_short_run", timeout_seconds=1.5))


def approval_workflow(name: str, *, on_timeout: str) -> Workflow:
    """Wait for the `approved` signal naming the ticket, then pass its payload on."""
    return Workflow(
        name=name,
        description="Wait for an approval signal, then report it.",
        input_model=ApprovalInput,
        steps=[
            StepSpec(
                name="approval",
                kind="wait_for_event",
                config={
                    "event": "approved",
                    "match": "{{ inputs.ticket }}",
                    "timeout_seconds": "{{ inputs.timeout }}",
                    "on_timeout": on_timeout,
                },
            ),
            StepSpec(
                name="report",
                kind="transform",
                config={"output": {"approval": "{{ steps.approval.output }}"}},
            ),
        ],
    )


workflows.define(approval_workflow("await_approval", on_timeout="fail"))
workflows.define(approval_workflow("await_approval_or_go_on", on_timeout="continue"))
