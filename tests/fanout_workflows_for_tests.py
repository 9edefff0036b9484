"""Workflows with parallel branches and maps, for tests; declared through the public API.

Their step functions count what they did in Redis (the test's database), so a test can tell
how often each branch or item ran and how many ran at once, across worker processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext, StepFailure
from conveyor.workflows import RetryPolicy, StepSpec, Workflow

FAST_RETRY = RetryPolicy(max_attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.1)


class CountedInput(BaseModel):
    """Where the steps count (a Redis URL and a key prefix), how long each naps, and which
    items fail."""

    model_config = ConfigDict(extra="forbid")

    redis: str
    key: str
    count: int = Field(4, ge=0, le=10_001)
    nap: float = Field(0.0, ge=0, le=10)
    fail_at: list[int | str] = Field(default_factory=list)


def _counter(data: dict[str, Any]) -> redis.Redis:
    return redis.Redis.from_url(data["redis"])


@steps.function("tests.numbers")
def numbers(ctx: StepContext, data: Any) -> list[int]:
    """0 .. count-1: the list a map goes over."""
    return list(range(int(data["count"])))


@steps.function("tests.counted_nap")
def counted_nap(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Nap, counting this run of `name` and how many run at once; report where and when."""
    client, key = _counter(data), data["key"]
    name = str(data["name"])
    client.incr(f"{key}:ran:{name}")
    active = client.incr(f"{key}:active")
    client.set(f"{key}:peak", max(active, int(client.get(f"{key}:peak") or 0)))
    started = time.time()
    try:
        if name in {str(i) for i in data.get("fail_at", [])}:
            raise StepFailure(f"item {name} fails by design", retryable=False, code="BY_DESIGN")
        ctx.sleep(float(data["nap"]))
    finally:
        client.decr(f"{key}:active")
    client.incr(f"{key}:done:{name}")
    return {"name": name, "pid": os.getpid(), "started": started, "ended": time.time()}


def counted(name: str, **options: Any) -> StepSpec:
    """A python step running counted_nap as `name`."""
    return StepSpec(
        name=name,
        kind="python",
        config={"function": "tests.counted_nap", "with": {**_inputs(), "name": name}},
        retry=FAST_RETRY,
        **options,
    )


def _inputs() -> dict[str, Any]:
    return {
        "redis": "{{ inputs.redis }}",
        "key": "{{ inputs.key }}",
        "nap": "{{ inputs.nap }}",
        "fail_at": "{{ inputs.fail_at }}",
    }


workflows.define(
    Workflow(
        name="two_branches",
        description="Two independent steps that run side by side, then one that needs both.",
        input_model=CountedInput,
        steps=[
            StepSpec(name="start", kind="transform", config={"output": "go"}),
            counted("left", depends_on=["start"]),
            counted("right", depends_on=["start"]),
            StepSpec(
                name="joined",
                kind="python",
                depends_on=["left", "right"],
                config={
                    "function": "tests.counted_nap",
                    "with": {**_inputs(), "nap": 0, "name": "joined"},
                },
            ),
        ],
    )
)


def map_workflow(name: str, *, on_failure: str, concurrency: int) -> Workflow:
    """A list step, a map of counted naps over it, and a step after the map."""
    return Workflow(
        name=name,
        description="A map over a list known only at run time.",
        input_model=CountedInput,
        steps=[
            StepSpec(
                name="list",
                kind="python",
                config={"function": "tests.numbers", "with": {"count": "{{ inputs.count }}"}},
            ),
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": "{{ steps.list.output }}",
                    "concurrency": concurrency,
                    "on_failure": on_failure,
                    "step": {
                        "kind": "python",
                        "config": {
                            "function": "tests.counted_nap",
                            "with": {**_inputs(), "name": "{{ item }}"},
                        },
                        "retry": {"max_attempts": 2, "backoff_seconds": 0.05},
                    },
                },
            ),
            StepSpec(
                name="after",
                kind="transform",
                config={"output": {"each": "{{ steps.each.output }}"}},
            ),
        ],
    )


workflows.define(map_workflow("map_fail_fast", on_failure="fail_fast", concurrency=3))
workflows.define(map_workflow("map_collect", on_failure="collect", concurrency=3))
workflows.define(map_workflow("map_wide", on_failure="fail_fast", concurrency=8))

workflows.define(
    Workflow(
        name="map_of_model_calls",
        description="One model call per topic, each charged once.",
        input_model=CountedInput,
        steps=[
            StepSpec(
                name="list",
                kind="python",
                config={"function": "tests.numbers", "with": {"count": "{{ inputs.count }}"}},
            ),
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": "{{ steps.list.output }}",
                    "concurrency": 4,
                    "step": {"kind": "llm", "config": {"prompt": "item {{ item }}"}},
                },
            ),
        ],
    )
)


class HeldInput(BaseModel):
    """Where the held branch calls (the fake LLM server's /hold) and the key it counts by."""

    model_config = ConfigDict(extra="forbid")

    server: str
    key: str


workflows.define(
    Workflow(
        name="model_call_beside_a_held_call",
        description="A model call and an HTTP call the test server holds, side by side.",
        input_model=HeldInput,
        steps=[
            StepSpec(name="start", kind="transform", config={"output": "go"}),
            StepSpec(
                name="ask",
                kind="llm",
                depends_on=["start"],
                config={"prompt": "branch {{ inputs.key }}"},
            ),
            StepSpec(
                name="hold",
                kind="http",
                depends_on=["start"],
                config={"url": "{{ inputs.server }}/hold/{{ inputs.key }}"},
                timeout_seconds=60,
            ),
            StepSpec(
                name="joined",
                kind="transform",
                depends_on=["ask", "hold"],
                config={"output": "{{ steps.ask.output.text }}"},
            ),
        ],
    )
)


# The edges of fan-out (tests/acceptance/test_fanout_edges.py).
workflows.define(
    Workflow(
        name="sleep_at_the_end",
        description="A step, then a sleep that is the run's last step.",
        input_model=CountedInput,
        steps=[
            StepSpec(name="before", kind="transform", config={"output": "go"}),
            StepSpec(name="nap", kind="sleep", config={"seconds": 60}),
        ],
    )
)

workflows.define(
    Workflow(
        name="map_beside_branches",
        description="A map ready at the same time as two branches, one declared after it.",
        input_model=CountedInput,
        steps=[
            StepSpec(name="start", kind="transform", config={"output": "go"}),
            counted("x", depends_on=["start"]),
            StepSpec(
                name="each",
                kind="map",
                depends_on=["start"],
                config={"over": [0, 1], "step": {"kind": "transform", "config": {"output": 1}}},
            ),
            counted("y", depends_on=["start"]),
            StepSpec(
                name="end",
                kind="transform",
                depends_on=["x", "each", "y"],
                config={"output": "done"},
            ),
        ],
    )
)

workflows.define(
    Workflow(
        name="map_outlives_the_run",
        description="A collecting map whose items take longer than the run may.",
        input_model=CountedInput,
        timeout_seconds=1.5,
        steps=[
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": [0, 1, 2, 3],
                    "concurrency": 1,
                    "on_failure": "collect",
                    "step": {
                        "kind": "python",
                        "config": {
                            "function": "tests.counted_nap",
                            "with": {**_inputs(), "name": "{{ item }}"},
                        },
                    },
                },
            ),
        ],
    )
)

workflows.define(
    Workflow(
        name="map_of_a_stubborn_step",
        description="One map item that ignores a request to stop.",
        input_model=CountedInput,
        steps=[
            StepSpec(
                name="each",
                kind="map",
                config={
                    "over": [0],
                    "step": {
                        "kind": "python",
                        "config": {
                            "function": "tests.sleep_stubbornly",
                            "with": {"seconds": "{{ inputs.nap }}"},
                        },
                        "timeout_seconds": 30,
                    },
                },
            ),
        ],
    )
)
