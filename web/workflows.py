"""`/api/workflows` and `/api/agents/workflows/execute`: what can run, and running it."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import workflows
from conveyor.runs.payloads import (
    RunLinks,
    WorkflowExecuteRequest,
    WorkflowExecuteResponse,
)
from web.body import parse_body
from web.openapi import contract
from web.submit import await_outcome, submit_run

bp = Blueprint("workflows", __name__)


@bp.get("/api/workflows")
@contract({200: "application/json"})
def list_workflows() -> Response:
    """Every workflow with its input schema and steps."""
    return jsonify({"workflows": [w.describe() for w in workflows.all_of("workflow")]})


@bp.post("/api/agents/workflows/execute")
@contract(
    {200: WorkflowExecuteResponse, 202: WorkflowExecuteResponse},
    body=WorkflowExecuteRequest,
    headers={"Idempotency-Key": "Retrying with the same key returns the first result."},
)
def execute() -> tuple[Response, int]:
    """Start a workflow run. `async: true` answers 202 at once; otherwise wait (bounded) and
    answer 200 with the outputs when it finished in time, else 202 with where to follow it."""
    body = parse_body(WorkflowExecuteRequest)
    run = submit_run(
        workflows.get_workflow(body.workflow_id),
        inputs=body.inputs,
        user_id=body.user_id,
        metadata=body.metadata,
        session_id=body.session_id,
        webhook_url=body.webhook_url,
        concurrency=body.concurrency,
        priority=body.priority,
        singleton=body.singleton,
        debounce=body.debounce,
    )
    status, view = await_outcome(run, body.user_id, wait=not body.run_async)
    response = WorkflowExecuteResponse(
        workflow_run_id=run.id,
        status=status,  # type: ignore[arg-type]
        links=RunLinks(self=f"/api/runs/{run.id}"),
    )
    if view is not None:
        response.outputs, response.error, response.error_code = (
            view.output,
            view.error,
            view.error_code,
        )
        return jsonify(response.model_dump(mode="json", exclude_none=True)), 200
    return jsonify(response.model_dump(mode="json", exclude_none=True)), 202
