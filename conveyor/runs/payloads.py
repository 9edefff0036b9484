"""The payloads of runs that cross the HTTP boundary: submits, views, listings."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from conveyor.payload import Payload
from conveyor.workflows.definitions import ConcurrencySpec, DebounceSpec, SingletonSpec

RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# A service token with this scope starts runs for the user its body names (seed 001's
# "server-to-server" caller); the run is that user's, charged to them.
RUNS_WRITE_SCOPE = "runs:write"


class InvokeRequest(Payload):
    """`POST /api/agents/invoke`: run one agent as a one-step run; `async: false` waits for it
    (bounded, like workflow execute), otherwise the answer is at once."""

    model_config = ConfigDict(populate_by_name=True)

    agent_type: str = Field(min_length=1, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    user_id: UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    session_id: UUID | None = None
    # run.* events of this run are also POSTed here (docs/webhooks.md).
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2000)
    # Flow control (issue 24), overriding the definition's: held until a slot is free.
    concurrency: ConcurrencySpec | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    singleton: SingletonSpec | None = None
    debounce: DebounceSpec | None = None
    # Invoke answered at once before execute existed; its clients rely on that, so waiting is
    # asked for, where execute's is the default.
    run_async: bool = Field(default=True, alias="async")


class WorkflowExecuteRequest(Payload):
    """`POST /api/agents/workflows/execute`: run a workflow; wait for it unless `async` is true."""

    model_config = ConfigDict(populate_by_name=True)

    workflow_id: str = Field(min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    user_id: UUID | None = None
    run_async: bool = Field(default=False, alias="async")
    metadata: dict[str, Any] = Field(default_factory=dict)
    session_id: UUID | None = None
    # run.* events of this run are also POSTed here (docs/webhooks.md).
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2000)
    # Flow control (issue 24), overriding the definition's: held until a slot is free.
    concurrency: ConcurrencySpec | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    singleton: SingletonSpec | None = None
    debounce: DebounceSpec | None = None


class RunLinks(BaseModel):
    """Where to follow a run."""

    self: str


class InvokeResponse(BaseModel):
    """The answer to an invoke: the run's id and where it stands."""

    request_id: UUID
    status: RunStatus
    result: Any | None = None
    error: str | None = None
    error_code: str | None = None
    links: RunLinks


class WorkflowExecuteResponse(BaseModel):
    """The answer to a workflow submit: final (200) or still going (202)."""

    workflow_run_id: UUID
    status: RunStatus
    outputs: Any | None = None
    error: str | None = None
    error_code: str | None = None
    links: RunLinks


class StepView(BaseModel):
    """One step of a run as the owner sees it."""

    position: int
    name: str
    kind: str
    status: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    output: Any | None
    output_url: str | None
    usage: dict[str, Any] | None
    error: str | None
    error_code: str | None
    # Set on a rerun's steps before its from_step: copied from that run's checkpoint, not run.
    reused_from: UUID | None = None
    # A durable wait (sleep, wait_for_event): when its timer ends, and what it waits for.
    wake_at: datetime | None = None
    wait: dict[str, Any] | None = None


class ChildRunView(BaseModel):
    """A child run of a `workflow` step, as its parent's view lists it, with its usage."""

    id: UUID
    workflow_id: str
    status: RunStatus
    parent_step: int
    awaited: bool
    created_at: datetime
    finished_at: datetime | None
    calls: int
    total_tokens: int
    cost_micro_usd: int
    credits_charged: int


class RunSummary(BaseModel):
    """A run in a listing."""

    id: UUID
    kind: str
    workflow_id: str
    status: RunStatus
    progress: float
    current_step: str | None
    session_id: UUID | None
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunView(RunSummary):
    """`GET /api/runs/<id>`: the summary plus input, output, steps and bookkeeping."""

    input: dict[str, Any]
    metadata: dict[str, Any]
    output: Any | None
    output_url: str | None
    error: str | None
    attempts: int
    steps: list[StepView]
    cancel_requested_at: datetime | None
    updated_at: datetime
    # While `waiting`: when the beat job resumes it (null when only a signal can).
    wake_at: datetime | None = None
    # What a queued run held for dispatch (concurrency, debounce) or a waiting run (its waiting
    # step's kind: credits, rate_limit, sleep, event, approval, child) waits for.
    waiting_for: str | None = None
    concurrency_key: str | None = None
    priority: int | None = None
    # A rerun names the run it was started from and the step it was rerun from.
    rerun_of: UUID | None = None
    rerun_from_step: str | None = None
    # A child run names its parent and the parent's step position; a parent lists its children
    # (`workflow` steps) with each one's usage, and their sum.
    parent_run_id: UUID | None = None
    parent_step: int | None = None
    children: list[ChildRunView] = Field(default_factory=list)
    children_usage: dict[str, int] | None = None


class RerunRequest(Payload):
    """`POST /api/runs/<id>/rerun`: a new run from `from_step` on, reusing the earlier steps'
    checkpoints; `inputs` replace the old run's inputs (a fork)."""

    from_step: str = Field(min_length=1, max_length=64)
    inputs: dict[str, Any] | None = None


class RunListQuery(Payload):
    """`GET /api/runs` query parameters."""

    status: RunStatus | None = None
    workflow_id: str | None = Field(default=None, max_length=100)
    user_id: UUID | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class RunEventsQuery(Payload):
    """`GET /api/runs/<id>/events` query parameters."""

    since: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)
