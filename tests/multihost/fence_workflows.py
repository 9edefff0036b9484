"""The workflow tests/multihost/test_cut_off_worker.py runs: steps that write progress events
while they wait, each event and output naming the host that wrote it, so the test can tell which
worker wrote what. Worker and web hosts import it through CONVEYOR_WORKFLOW_MODULES.
"""

from __future__ import annotations

import socket
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from conveyor import steps, workflows
from conveyor.steps import StepContext
from conveyor.workflows import RetryPolicy, StepSpec, Workflow

log = structlog.get_logger(__name__)

WORKFLOW = "fence_progress"
STEPS = ("one", "two", "three", "four")
PROGRESS = "fence_progress"  # the event each step appends while it waits
# What the step logs around each progress write, so a test can tell whether one is still in
# flight (sent, no answer yet) and how each ended.
SENDING, WRITTEN, REFUSED = (f"{PROGRESS}_{what}" for what in ("sending", "written", "refused"))
# A step cut short by its worker's loss counts an attempt; the successor's is the next.
RETRY = RetryPolicy(max_attempts=3, backoff_seconds=0.2, max_backoff_seconds=1)


class FenceInput(BaseModel):
    """How many progress events each step writes, and the pause after each."""

    model_config = ConfigDict(extra="forbid")

    ticks: int = Field(2, ge=1, le=20)
    pause: float = Field(1.0, gt=0, le=5)


@steps.function("fence.progress")
def progress(ctx: StepContext, data: Any) -> dict[str, Any]:
    """Write a progress event, then pause (checking for a stop), `ticks` times; the events and
    the output name the host that ran the step."""
    host = socket.gethostname()
    for tick in range(int(data["ticks"])):
        if ctx.emit is not None:
            where = {"run_id": str(ctx.run_id), "step": ctx.step, "tick": tick}
            log.info(SENDING, **where)
            try:
                ctx.emit(PROGRESS, {"step": ctx.step, "tick": tick, "host": host})
            except BaseException as exc:
                log.info(REFUSED, error=type(exc).__name__, **where)
                raise
            log.info(WRITTEN, **where)
        ctx.sleep(float(data["pause"]))
    return {"step": ctx.step, "host": host}


workflows.define(
    Workflow(
        name=WORKFLOW,
        description="Four steps that write progress while they wait (multihost fence test).",
        input_model=FenceInput,
        steps=[
            StepSpec(
                name=name,
                kind="python",
                config={"function": "fence.progress"},
                retry=RETRY,
                timeout_seconds=30,
            )
            for name in STEPS
        ],
    )
)
