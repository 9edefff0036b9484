"""Workflow definitions, the catalogue loaded from files and modules, built-in workflows, agent
types, templates."""

from conveyor.workflows.definitions import (
    RetryPolicy,
    StepSpec,
    Workflow,
    all_of,
    define,
    get,
    get_agent,
    get_workflow,
    same_definition,
)

__all__ = [
    "RetryPolicy",
    "StepSpec",
    "Workflow",
    "all_of",
    "define",
    "get",
    "get_agent",
    "get_workflow",
    "same_definition",
]
