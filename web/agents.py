"""`/api/agents`: list agents, invoke one as a run."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from conveyor import agents, runs
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.errors import Forbidden, InvalidInput
from conveyor.models import InvokeRequest, InvokeResponse, RunLinks
from web.body import parse_body
from web.context import get_db, get_enqueuer, get_principal, get_publisher

bp = Blueprint("agents", __name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"


@bp.get("/api/agents")
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
                for agent in agents.all_agents()
            ]
        }
    )


@bp.post("/api/agents/invoke")
def invoke() -> tuple[Response, int]:
    """Store a run for one agent, publish it after commit, answer 202 with where to follow it."""
    body = parse_body(InvokeRequest)
    principal = get_principal()
    user_id = principal.require_user()
    if body.user_id is not None and body.user_id != user_id:
        raise Forbidden("You can only invoke agents as yourself; omit user_id.")
    agent = agents.get_agent(body.agent_type)
    agent.validate_input(body.input)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be 1 to 255 characters.")

    run = runs.create_run(
        get_db(),
        user_id=user_id,
        kind="agent",
        workflow_id=agent.name,
        input=body.input,
        metadata=body.metadata,
        idempotency_key=key,
    )
    if run.created:
        assert run.event is not None
        get_publisher().publish(run.event)
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(run.id))
    response = InvokeResponse(
        request_id=run.id,
        status=run.status,  # type: ignore[arg-type]
        links=RunLinks(self=f"/api/runs/{run.id}"),
    )
    return jsonify(response.model_dump(mode="json", exclude_none=True)), 202 if run.created else 200
