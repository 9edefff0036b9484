"""Built-in step kinds: llm, http, python, transform."""

from __future__ import annotations

from conveyor.steps.base import (
    LlmUsage,
    StepContext,
    StepFailure,
    StepKind,
    StepResult,
    StepStopped,
)
from conveyor.steps.http import HTTP
from conveyor.steps.llm import LLM
from conveyor.steps.python import PYTHON, function, get_function
from conveyor.steps.transform import TRANSFORM

KINDS: dict[str, StepKind] = {kind.name: kind for kind in (LLM, HTTP, PYTHON, TRANSFORM)}

__all__ = [
    "KINDS",
    "LlmUsage",
    "StepContext",
    "StepFailure",
    "StepKind",
    "StepResult",
    "StepStopped",
    "function",
    "get_function",
]
