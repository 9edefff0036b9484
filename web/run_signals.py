"""`POST /api/runs/<id>/signals/<name>`: resume a run waiting for an event (wait_for_event)."""

from __future__ import annotations

import json
import re

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.errors import InvalidInput
from conveyor.runs import signals, views
from conveyor.runs.payloads import RunStatus
from web.auth import audit_request
from web.body import parse_body
from web.context import get_db, get_enqueuer, get_principal, get_publisher, get_settings
from web.openapi import contract

bp = Blueprint("run_signals", __name__)


class SignalAccepted(BaseModel):
    """The run resumed: queued again, the waiting step completed with the payload."""

    workflow_run_id: str
    status: RunStatus
    step: str
    event: str


@bp.post("/api/runs/<run_id>/signals/<name>")
@contract({200: SignalAccepted}, body=signals.SignalRequest)
def signal(run_id: str, name: str) -> Response:
    """Resume the run if it waits for event `name` (and `match`, when its wait has a key); the
    run's owner, an admin, or a service token with scope `runs:signal`. 409 if it is not waiting
    for it, including a second signal for a wait already resumed."""
    body = parse_body(signals.SignalRequest)
    if not re.fullmatch(signals.EVENT_PATTERN, name):
        raise InvalidInput(f"{name!r} is not an event name (letters, digits, `_.:-`, ≤ 100)")
    if len(json.dumps(body.payload)) > get_settings().output_inline_max_bytes:
        raise InvalidInput(
            f"the payload is larger than {get_settings().output_inline_max_bytes} bytes as JSON"
        )
    principal = get_principal()
    target = views.parse_run_id(run_id)
    db = get_db()
    if principal.is_service:
        principal.require_scope(signals.RUNS_SIGNAL_SCOPE)
    else:
        principal.require_user()
        # RLS decides: the owner or an admin sees the run; anyone else gets 404.
        views.require_visible(db, principal.rls_claims(), target)
    resumed = signals.deliver_signal(db, target, name, body)
    get_publisher().publish(*resumed.events)
    # After commit, as submit does; if Redis refuses, the requeue job publishes the queued run.
    get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(target))
    if resumed.user_id != principal.user_id:
        # A backend or an admin acted on someone's run, as cancel records an admin's.
        audit_request(
            db,
            action="service.run.signal" if principal.is_service else "admin.run.signal",
            outcome="success",
            actor_user_id=principal.user_id,
            subject=str(target),
            details={"owner": str(resumed.user_id), "event": name, "caller": principal.subject},
        )
    accepted = SignalAccepted(
        workflow_run_id=str(target), status="queued", step=resumed.step, event=name
    )
    return jsonify(accepted.model_dump(mode="json"))
