"""Built-in step kinds: llm, http, python, transform, the durable waits sleep, wait_for_event
and approval, and workflow (a child run)."""

from __future__ import annotations

from conveyor.steps.approval import APPROVAL_KIND
from conveyor.steps.base import (
    CallEstimate,
    LlmUsage,
    StepContext,
    StepDeferred,
    StepFailure,
    StepKind,
    StepResult,
    StepStopped,
)
from conveyor.steps.child import CHILD_KIND
from conveyor.steps.http import HTTP
from conveyor.steps.llm import LLM
from conveyor.steps.map import MAP_KIND
from conveyor.steps.python import PYTHON, function, get_function
from conveyor.steps.transform import TRANSFORM
from conveyor.steps.wait import (
    SLEEP_KIND,
    WAIT_FOR_EVENT_KIND,
    WAIT_KINDS,
    StepSuspended,
    WaitRequest,
)

KINDS: dict[str, StepKind] = {
    kind.name: kind
    for kind in (
        LLM,
        HTTP,
        PYTHON,
        TRANSFORM,
        SLEEP_KIND,
        WAIT_FOR_EVENT_KIND,
        MAP_KIND,
        APPROVAL_KIND,
        CHILD_KIND,
    )
}

__all__ = [
    "KINDS",
    "WAIT_KINDS",
    "CallEstimate",
    "LlmUsage",
    "StepContext",
    "StepDeferred",
    "StepFailure",
    "StepKind",
    "StepResult",
    "StepStopped",
    "StepSuspended",
    "WaitRequest",
    "function",
    "get_function",
]
