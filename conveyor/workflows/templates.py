"""Step configuration templates: `{{ inputs.topic }}`, `{{ steps.outline.output.text }}`.

A string that is exactly one `{{ expression }}` becomes that value with its type (a dict stays a
dict); any other string with `{{` is rendered as text. Jinja's sandbox keeps definitions from
reaching Python internals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_WHOLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}$", re.DOTALL)


class TemplateFailure(ValueError):
    """A template could not be rendered: a syntax error or a reference to nothing."""


def render(value: Any, context: dict[str, Any]) -> Any:
    """value with every template string rendered against context (dicts and lists recursively)."""
    if isinstance(value, str):
        return _render_string(value, context)
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def _render_string(text: str, context: dict[str, Any]) -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        whole = _WHOLE_EXPRESSION.match(text.strip())
        if whole:
            result = _expression(whole["expr"])(**context)
            if isinstance(result, StrictUndefined):
                str(result)  # raises UndefinedError naming the missing reference
            return result
        return _template(text).render(**context)
    except TemplateError as exc:
        raise TemplateFailure(f"template {text!r}: {exc.message or exc}") from exc
    except Exception as exc:  # e.g. `{{ inputs.n + 1 }}` with n null: the data, not the engine
        raise TemplateFailure(f"template {text!r}: {type(exc).__name__}: {exc}") from exc


# Compiling is most of a render's cost and definitions repeat the same strings for every run.
@lru_cache(maxsize=1024)
def _expression(source: str) -> Callable[..., Any]:
    return _ENV.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=1024)
def _template(source: str) -> Template:
    return _ENV.from_string(source)


def check_syntax(value: Any) -> None:
    """Raise TemplateFailure if any template string in value does not parse."""
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        try:
            _ENV.parse(value)
        except TemplateError as exc:
            raise TemplateFailure(f"template {value!r}: {exc.message or exc}") from exc
    elif isinstance(value, dict):
        for item in value.values():
            check_syntax(item)
    elif isinstance(value, list):
        for item in value:
            check_syntax(item)
