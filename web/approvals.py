"""Approval decisions: `POST /api/approvals/<token>` (the signed link is the credential) and
`POST /api/runs/<id>/approval` (the named approver's or an admin's token)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel

from conveyor.auth.tenancy import has_admin_role
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.runs import approvals, views
from conveyor.runs.payloads import RunStatus
from conveyor.runs.resume import Resumed
from conveyor.runs.run_rows import queued_by
from web.auth import audit_request, public
from web.body import parse_body
from web.context import get_db, get_enqueuer, get_principal, get_publisher, get_settings
from web.openapi import contract

bp = Blueprint("approvals", __name__)
# A signed link is long but bounded: longer is not ours (and not worth verifying).
MAX_TOKEN_CHARS = 1000


class ApprovalAccepted(BaseModel):
    """The decision was taken: the run goes on (`queued`), or a rejection with on_reject: fail
    ended it (`failed`)."""

    workflow_run_id: str
    status: RunStatus
    step: str
    decision: str


def _decision() -> approvals.ApprovalDecision:
    """The body (optional on a link) with `?decision=` as the fallback a bare link carries."""
    body = (
        parse_body(approvals.ApprovalDecision)
        if request.get_data()
        else approvals.ApprovalDecision()
    )
    if body.decision is None and request.args.get("decision") in approvals.DECIDED:
        body = body.model_copy(update={"decision": request.args["decision"]})
    return body


def _answer(resumed: Resumed, decision: approvals.ApprovalDecision) -> Response:
    """Publish after commit, send the run on if it goes on, and say what happened."""
    get_publisher().publish(*resumed.events)
    if resumed.queued:
        # If Redis refuses, the requeue job publishes the queued run.
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(resumed.run_id))
    for parent in queued_by(resumed.events, besides=resumed.run_id):  # a map's parent it queued
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(parent))
    accepted = ApprovalAccepted(
        workflow_run_id=str(resumed.run_id),
        status="queued" if resumed.queued else "failed",
        step=resumed.step,
        decision=approvals.DECIDED[str(decision.decision)],
    )
    return jsonify(accepted.model_dump(mode="json"))


@bp.post("/api/approvals/<token>")
@public
@contract({200: ApprovalAccepted}, body=approvals.ApprovalDecision, auth=None)
def decide_by_link(token: str) -> Response:
    """Approve or reject with a signed, single-use link; no access token needed. 403 for a
    link this server did not sign, 410 once expired, 409 once decided."""
    decision = _decision()
    if len(token) > MAX_TOKEN_CHARS:
        raise approvals.ApprovalLinkInvalid("this approval link is not valid")
    resumed = approvals.decide_by_link(get_db(), get_settings().api_secret(), token, decision)
    return _answer(resumed, decision)


@bp.post("/api/runs/<run_id>/approval")
@contract({200: ApprovalAccepted}, body=approvals.ApprovalDecision)
def decide_as_user(run_id: str) -> Response:
    """Approve or reject the approval a run waits for, as its named approver or an admin
    (403 for anyone else)."""
    decision = parse_body(approvals.ApprovalDecision)
    principal = get_principal()
    user_id = principal.require_user()
    target = views.parse_run_id(run_id)
    db = get_db()
    is_admin = principal.is_admin or has_admin_role(db, user_id)
    resumed = approvals.decide_as_user(db, target, user_id, is_admin=is_admin, decision=decision)
    if resumed.user_id != user_id:
        # Someone decided on another user's run: the approver (the design) or an admin.
        audit_request(
            db,
            action="run.approval",
            outcome="success",
            actor_user_id=user_id,
            subject=str(target),
            details={"owner": str(resumed.user_id), "decision": decision.decision},
        )
    return _answer(resumed, decision)
