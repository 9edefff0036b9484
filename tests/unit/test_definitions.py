"""Workflow definitions are checked when declared, and templates render as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from conveyor.workflows import templates
from conveyor.workflows.catalog import load_file
from conveyor.workflows.definitions import (
    ConcurrencySpec,
    RetryPolicy,
    SingletonSpec,
    StepSpec,
    Workflow,
)


class NoInput(BaseModel):
    """Nothing."""


def flow(*steps: StepSpec) -> Workflow:
    return Workflow(name="flow", description="", input_model=NoInput, steps=list(steps))


def step(name: str, depends_on: list[str] | None = None) -> StepSpec:
    return StepSpec(name=name, kind="transform", config={"output": name}, depends_on=depends_on)


def test_a_plain_list_runs_in_declared_order() -> None:
    assert [s.name for s in flow(step("a"), step("b"), step("c")).steps] == ["a", "b", "c"]


def test_a_dag_runs_each_step_after_its_dependencies() -> None:
    dag = flow(step("report", ["left", "right"]), step("left", []), step("right", ["left"]))

    assert [s.name for s in dag.steps] == ["left", "right", "report"]


def test_a_cycle_is_refused_at_declaration() -> None:
    with pytest.raises(ValidationError, match="cycle"):
        flow(step("a", ["b"]), step("b", ["a"]))


def test_a_dependency_on_an_unknown_step_is_refused() -> None:
    with pytest.raises(ValidationError, match="depends on unknown"):
        flow(step("a", ["ghost"]))


def test_an_unknown_step_kind_names_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="unknown kind 'shell'"):
        StepSpec(name="a", kind="shell")


def test_a_step_config_with_a_wrong_key_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"(?s)promt.*not permitted"):
        StepSpec(name="a", kind="llm", config={"promt": "hi"})


def test_a_template_that_does_not_parse_is_refused_at_declaration() -> None:
    with pytest.raises(ValidationError, match="template"):
        StepSpec(name="a", kind="llm", config={"prompt": "{{ inputs.topic "})


def test_a_whole_expression_keeps_its_type_and_text_is_interpolated() -> None:
    context = {"inputs": {"n": 2, "tags": ["a"]}}

    rendered = templates.render({"n": "{{ inputs.n }}", "s": "n={{ inputs.n }}"}, context)

    assert rendered == {"n": 2, "s": "n=2"}
    assert templates.render("{{ inputs.tags }}", context) == ["a"]


def test_a_reference_to_nothing_is_a_template_failure() -> None:
    with pytest.raises(templates.TemplateFailure, match="nope"):
        templates.render("{{ steps.nope.output }}", {"steps": {}})


def test_templates_cannot_reach_python_internals() -> None:
    with pytest.raises(templates.TemplateFailure, match="unsafe"):
        templates.render("{{ inputs.__class__.__mro__ }}", {"inputs": {}})


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_seconds=1, max_backoff_seconds=4)

    for failed, ceiling in ((1, 1), (2, 2), (3, 4), (4, 4)):
        delay = policy.delay(failed)
        assert ceiling / 2 <= delay <= ceiling


def test_retry_after_is_a_floor_on_the_delay() -> None:
    policy = RetryPolicy(backoff_seconds=0.1, max_backoff_seconds=30)

    assert policy.delay(1, retry_after=5) >= 5


def test_a_yaml_file_defines_a_workflow_with_a_typed_input(tmp_path: Path) -> None:
    path = tmp_path / "greet.yaml"
    path.write_text(
        "name: greet\n"
        "inputs:\n  who: {type: string, required: true, max_length: 10}\n"
        "  times: {type: integer, default: 1}\n"
        "steps:\n  - {name: say, kind: transform, config: {output: 'hi {{ inputs.who }}'}}\n"
    )

    workflow = load_file(path)

    assert workflow.validate_input({"who": "ada"}).model_dump() == {"who": "ada", "times": 1}
    with pytest.raises(Exception, match="who"):
        workflow.validate_input({"who": "a" * 11})


def test_a_broken_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "broken", "steps": [{"name": "x", "kind": "nope"}]}')

    with pytest.raises(ValueError, match=r"(?s)broken\.json.*unknown kind"):
        load_file(path)


def test_a_template_that_fails_on_the_data_is_a_template_failure() -> None:
    with pytest.raises(templates.TemplateFailure, match="TypeError"):
        templates.render("{{ inputs.n + 1 }}", {"inputs": {"n": None}})


def test_a_definition_declaring_two_flow_keys_is_refused_at_declaration() -> None:
    with pytest.raises(ValidationError, match="at most one of concurrency, singleton"):
        Workflow(
            name="flow",
            description="",
            input_model=NoInput,
            steps=[step("a")],
            concurrency=ConcurrencySpec(key="{{ user_id }}", limit=2),
            singleton=SingletonSpec(key="{{ user_id }}"),
        )
