"""`/api/agents`: list agent types, invoke one as a run."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import workflows
from conveyor.runs.payloads import InvokeRequest, InvokeResponse, RunLinks
from web.body import parse_body
from web.openapi import contract
from web.submit import await_outcome, submit_run

bp = Blueprint("agents", __name__)


@bp.get("/api/agents")
@contract({200: "application/json"})
def list_agents() -> Response:
    """Every agent type with its input schema."""
    return jsonify(
        {
            "agents": [
                {
                    "agent_type": agent.name,
                    "description": agent.description,
                    "input_schema": agent.input_model.model_json_schema(),
                }
                for agent in workflows.all_of("agent")
            ]
        }
    )


@bp.post("/api/agents/invoke")
@contract(
    {200: InvokeResponse, 202: InvokeResponse},
    body=InvokeRequest,
    headers={"Idempotency-Key": "Retrying with the same key returns the first result."},
)
def invoke() -> tuple[Response, int]:
    """Store a run for one agent, publish it after commit, answer 202 with where to follow it;
    `async: false` waits (bounded) and answers 200 with `result` or `error` once it ended."""
    body = parse_body(InvokeRequest)
    run = submit_run(
        workflows.get_agent(body.agent_type),
        inputs=body.input,
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
    response = InvokeResponse(
        request_id=run.id,
        status=status,  # type: ignore[arg-type]
        links=RunLinks(self=f"/api/runs/{run.id}"),
    )
    if view is not None:  # it ended: the document's `result`, or `error` when it failed
        response.result, response.error, response.error_code = (
            view.output,
            view.error,
            view.error_code,
        )
        return jsonify(response.model_dump(mode="json", exclude_none=True)), 200
    return jsonify(response.model_dump(mode="json", exclude_none=True)), 202 if run.created else 200
