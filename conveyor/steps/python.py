"""The `python` step: call a function registered with `@function(name)`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import Field

from conveyor.steps.base import StepConfig, StepContext, StepFailure, StepKind, StepResult

StepFunction = Callable[[StepContext, Any], Any]

_FUNCTIONS: dict[str, StepFunction] = {}


class PythonConfig(StepConfig):
    """`python` step configuration: which function, and the argument it gets (templated)."""

    function: str = Field(min_length=1)
    with_: Any = Field(default="{{ inputs }}", alias="with")


def function(name: str) -> Callable[[StepFunction], StepFunction]:
    """Decorator registering fn(ctx, data) -> JSON value as the python step function `name`."""

    def decorate(fn: StepFunction) -> StepFunction:
        if _FUNCTIONS.get(name, fn) is not fn:
            raise ValueError(f"step function {name!r} is registered twice; pick another name")
        _FUNCTIONS[name] = fn
        return fn

    return decorate


def get_function(name: str) -> StepFunction:
    """The registered function, or a LookupError listing the known ones."""
    try:
        return _FUNCTIONS[name]
    except KeyError:
        known = ", ".join(sorted(_FUNCTIONS)) or "none"
        raise LookupError(
            f"no step function {name!r}; register it with @steps.function({name!r}) "
            f"in a module listed in CONVEYOR_WORKFLOW_MODULES (known: {known})"
        ) from None


def run_python(ctx: StepContext, config: PythonConfig) -> StepResult:
    """Call the function; its return value must be JSON."""
    output = get_function(config.function)(ctx, config.with_)
    try:
        json.dumps(output)
    except (TypeError, ValueError) as exc:
        raise StepFailure(
            f"step function {config.function!r} returned something that is not JSON: {exc}",
            retryable=False,
        ) from exc
    return StepResult(output)


PYTHON = StepKind("python", PythonConfig, run_python)
