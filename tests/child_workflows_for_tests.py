"""Workflows with approvals and child runs, for tests (tests/acceptance/test_approvals.py,
test_child_runs.py, test_map_of_children.py); declared through the public API like any user's.
A worker in another process imports this module through CONVEYOR_WORKFLOW_MODULES.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows import StepSpec, Workflow
from tests.workflows_for_tests import python_step


class GateInput(BaseModel):
    """Who approves, and how long they have."""

    model_config = ConfigDict(extra="forbid")

    approver: str
    expires: float = Field(3600.0, gt=0, le=30 * 24 * 3600)


def gate_workflow(name: str, *, on_timeout: str, on_reject: str) -> Workflow:
    """An approval by `inputs.approver`, then a step reporting the decision."""
    return Workflow(
        name=name,
        description="Ask a named user to approve, then report the decision.",
        input_model=GateInput,
        steps=[
            StepSpec(
                name="sign_off",
                kind="approval",
                config={
                    "approver": "{{ inputs.approver }}",
                    "expires_in_seconds": "{{ inputs.expires }}",
                    "message": "Ship it?",
                    "on_timeout": on_timeout,
                    "on_reject": on_reject,
                },
            ),
            StepSpec(
                name="report",
                kind="transform",
                config={"output": {"decision": "{{ steps.sign_off.output.decision }}"}},
            ),
        ],
    )


workflows.define(gate_workflow("approval_gate", on_timeout="continue", on_reject="continue"))
workflows.define(gate_workflow("approval_gate_strict", on_timeout="fail", on_reject="fail"))


class NumberInput(BaseModel):
    """A number to work on."""

    model_config = ConfigDict(extra="forbid")

    n: int


@steps.function("tests.double")
def double(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Twice the run's `n`."""
    return {"doubled": int(data["n"]) * 2}


@steps.function("tests.refuse")
def refuse(ctx: StepContext, data: Any) -> dict[str, Any]:
    """A step that always fails, for good."""
    raise steps.StepFailure("refused on purpose", retryable=False)


class AnyInput(BaseModel):
    """Any inputs: the child's definition checks what it is given."""

    model_config = ConfigDict(extra="allow")


def parent_workflow(name: str, child: str, inputs: dict[str, Any], *, wait: bool) -> Workflow:
    """A `workflow` step starting `child` with inputs, then a step reading its output."""
    return Workflow(
        name=name,
        description=f"Start {child} as a child run, then report what it gave.",
        input_model=AnyInput,
        steps=[
            StepSpec(
                name="child",
                kind="workflow",
                config={"workflow": child, "inputs": inputs, "wait": wait},
            ),
            StepSpec(
                name="report",
                kind="transform",
                config={"output": {"child": "{{ steps.child.output }}"}},
            ),
        ],
    )


workflows.define(
    Workflow(
        name="child_double",
        description="Double a number.",
        input_model=NumberInput,
        steps=[python_step("double", "tests.double")],
    )
)
workflows.define(
    Workflow(
        name="child_refuses",
        description="Fail.",
        input_model=NumberInput,
        steps=[python_step("refuse", "tests.refuse")],
    )
)
N = {"n": "{{ inputs.n }}"}
workflows.define(parent_workflow("parent_awaits_double", "child_double", N, wait=True))
workflows.define(parent_workflow("parent_detaches_double", "child_double", N, wait=False))
workflows.define(parent_workflow("parent_awaits_refusal", "child_refuses", N, wait=True))
TICKET = {"ticket": "{{ inputs.ticket }}"}
workflows.define(parent_workflow("parent_awaits_signal", "await_approval", TICKET, wait=True))
workflows.define(parent_workflow("grandparent", "parent_awaits_signal", TICKET, wait=True))
HOLD = {"server": "{{ inputs.server }}", "key": "{{ inputs.key }}"}
workflows.define(parent_workflow("parent_awaits_llm_hold", "llm_hold_llm", HOLD, wait=True))
TOPIC = {"topic": "{{ inputs.topic }}"}
workflows.define(parent_workflow("parent_awaits_brief", "write_brief", TOPIC, wait=True))
workflows.define(parent_workflow("parent_of_nothing", "no_such_workflow", N, wait=True))


class ChildItemsInput(BaseModel):
    """A child workflow taking `n`, and one child run per number."""

    model_config = ConfigDict(extra="forbid")

    child: str
    numbers: list[int]


def map_of_children(name: str, *, on_failure: str) -> Workflow:
    """A map whose items are child runs of `inputs.child` with `n` = the item, two at a time."""
    return Workflow(
        name=name,
        description="One child run per number, their outputs in input order.",
        input_model=ChildItemsInput,
        steps=[
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": "{{ inputs.numbers }}",
                    "concurrency": 2,
                    "on_failure": on_failure,
                    "step": {
                        "kind": "workflow",
                        "config": {"workflow": "{{ inputs.child }}", "inputs": {"n": "{{ item }}"}},
                    },
                },
            ),
        ],
    )


workflows.define(map_of_children("map_of_children", on_failure="fail_fast"))
workflows.define(map_of_children("map_of_children_collect", on_failure="collect"))
workflows.define(
    Workflow(
        name="child_waits_for_go",
        description="Wait for the `go` signal naming n.",
        input_model=NumberInput,
        steps=[
            StepSpec(
                name="wait",
                kind="wait_for_event",
                config={"event": "go", "match": "{{ inputs.n }}"},
            )
        ],
    )
)


@steps.function("tests.refuse_one")
def refuse_one(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Fail for good when `n` is 1; pass `n` on otherwise."""
    if int(data["n"]) == 1:
        raise steps.StepFailure("one is refused on purpose", retryable=False)
    return {"n": data["n"]}


workflows.define(
    Workflow(
        name="child_fails_one_or_waits",
        description="Fail at once for n = 1; else wait for the `go` signal naming n.",
        input_model=NumberInput,
        steps=[
            python_step("gate", "tests.refuse_one"),
            StepSpec(
                name="wait",
                kind="wait_for_event",
                config={"event": "go", "match": "{{ inputs.n }}"},
            ),
        ],
    )
)
