"""Load every definition a process can run: built-ins, Python modules and JSON/YAML files."""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from conveyor import workflows
from conveyor.settings import Settings
from conveyor.workflows.definitions import NAME_PATTERN, StepSpec, Workflow, WorkflowKind

FIELD_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "object": dict[str, Any],
    "array": list[Any],
}
_loaded: set[tuple[str, ...]] = set()
_lock = threading.Lock()


class InputField(BaseModel):
    """One input of a file-defined workflow."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    required: bool = False
    default: Any = None
    description: str | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    minimum: float | None = None
    maximum: float | None = None


class WorkflowFile(BaseModel):
    """The shape of a workflow file (JSON or YAML)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    kind: WorkflowKind = "workflow"
    inputs: dict[str, InputField] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    output: Any = None
    timeout_seconds: float = Field(3600.0, gt=0)


def input_model(name: str, fields: dict[str, InputField]) -> type[BaseModel]:
    """A pydantic model for a file's `inputs`, refusing unknown fields."""
    definitions: dict[str, Any] = {}
    for field_name, spec in fields.items():
        constraints = {
            key: value
            for key, value in (
                ("min_length", spec.min_length),
                ("max_length", spec.max_length),
                ("ge", spec.minimum),
                ("le", spec.maximum),
            )
            if value is not None
        }
        default: Any = ... if spec.required else spec.default
        definitions[field_name] = (
            FIELD_TYPES[spec.type] if spec.required else FIELD_TYPES[spec.type] | None,
            Field(default, description=spec.description, **constraints),  # type: ignore[call-overload]
        )
    model_name = "".join(part.title() for part in name.split("_")) + "Input"
    model: type[BaseModel] = create_model(
        model_name, __config__=ConfigDict(extra="forbid"), **definitions
    )
    return model


def load_file(path: Path) -> Workflow:
    """Parse one definition file; errors name the file and what is wrong."""
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        spec = WorkflowFile.model_validate(raw)
        return Workflow(
            name=spec.name,
            description=spec.description,
            kind=spec.kind,
            input_model=input_model(spec.name, spec.inputs),
            steps=spec.steps,
            output=spec.output,
            timeout_seconds=spec.timeout_seconds,
        )
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"workflow file {path}: {exc}") from exc


def load_catalog(settings: Settings) -> None:
    """Import built-ins and CONVEYOR_WORKFLOW_MODULES, then define every file in the workflows
    folder. Idempotent: web and worker call it at start."""
    key = (str(settings.workflows_dir.resolve()), *settings.workflow_modules)
    with _lock:
        if key in _loaded:
            return
        importlib.import_module("conveyor.workflows.builtin")
        for module in settings.workflow_modules:
            importlib.import_module(module)
        if settings.workflows_dir.is_dir():
            for path in sorted(settings.workflows_dir.iterdir()):
                if path.suffix in (".json", ".yaml", ".yml"):
                    workflows.define(load_file(path))
        _loaded.add(key)
