"""`/api/runs`: read, list and cancel runs. Every read goes through RLS."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import metrics, runs
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.runs import artifacts, rerun, views
from conveyor.runs.dispatch import dispatch_runs
from conveyor.runs.payloads import RerunRequest, RunEventsQuery, RunListQuery, RunSummary, RunView
from conveyor.runs.run_rows import queued_by
from web.auth import audit_request, require_admin
from web.body import idempotency_key, parse_body, parse_query
from web.context import (
    get_db,
    get_enqueuer,
    get_principal,
    get_publisher,
    get_settings,
    get_store,
)
from web.openapi import contract, listing

bp = Blueprint("runs", __name__)


@bp.get("/api/runs/<run_id>")
@contract({200: RunView})
def get_run(run_id: str) -> Response:
    """A run with its steps; someone else's run answers 404 like a missing one."""
    view = views.get_run(get_db(), get_principal().rls_claims(), views.parse_run_id(run_id))
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/runs")
@contract({200: listing("runs", RunSummary)}, query=RunListQuery)
def list_runs() -> Response:
    """The caller's runs, newest first: `?status=&workflow_id=&limit=&cursor=`; admins may add
    `user_id=` to list someone else's."""
    query = parse_query(RunListQuery)
    principal = get_principal()
    user_id = principal.require_user()
    if query.user_id is not None and query.user_id != user_id:
        principal = require_admin()
        user_id = query.user_id
    page = views.list_runs(
        get_db(),
        principal.rls_claims(),
        user_id=user_id,
        status=query.status,
        workflow_id=query.workflow_id,
        limit=query.limit,
        cursor=query.cursor,
    )
    return jsonify(
        {
            "runs": [run.model_dump(mode="json") for run in page.runs],
            "next_cursor": page.next_cursor,
        }
    )


@bp.get("/api/runs/<run_id>/events")
@contract({200: "application/json"}, query=RunEventsQuery)
def list_events(run_id: str) -> Response:
    """The run's event log after `?since=<seq>` (default 0), oldest first, at most `limit`."""
    query = parse_query(RunEventsQuery)
    events = views.list_events(
        get_db(),
        get_principal().rls_claims(),
        views.parse_run_id(run_id),
        since=query.since,
        limit=query.limit,
    )
    envelopes = [event.envelope() for event in events]
    last_seq = events[-1].seq if events else query.since
    return jsonify({"events": envelopes, "next_since": last_seq})


@bp.get("/api/runs/<run_id>/output")
@bp.get("/api/runs/<run_id>/steps/<step>/output")
@contract({200: "application/json"})
def get_output(run_id: str, step: str | None = None) -> Response:
    """The full output of a run or a step, fetched from storage when it was too large to inline."""
    output, url = views.stored_output(
        get_db(), get_principal().rls_claims(), views.parse_run_id(run_id), step
    )
    return jsonify({"output": artifacts.load(get_store(), output, url)})


@bp.post("/api/runs/<run_id>/cancel")
@contract({200: RunView})
def cancel_run(run_id: str) -> Response:
    """Cancel a queued run at once, or ask a running one to stop at its next checkpoint."""
    principal = get_principal()
    principal.require_user()
    db = get_db()
    target = views.parse_run_id(run_id)
    # RLS decides: the owner or an admin sees the run; anyone else gets 404, as for a missing run.
    view, events, owner = runs.cancel_run(db, principal.rls_claims(), target)
    get_publisher().publish(*events)
    # A map's parent its child's cancel queued (a collected failure) goes on now.
    for queued in queued_by(events, besides=target):
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(queued))
    if view.status == "cancelled" and view.concurrency_key is not None:
        # Its slot is free now: the key's next held run goes out at once, not at the next tick.
        for dispatched in dispatch_runs(db, get_settings().dispatch_window):
            get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(dispatched))
    if owner != principal.user_id:
        audit_request(
            db,
            action="admin.run.cancel",
            outcome="success",
            actor_user_id=principal.user_id,
            subject=str(target),
            details={"owner": str(owner)},
        )
    return jsonify(view.model_dump(mode="json"))


@bp.post("/api/runs/<run_id>/rerun")
@contract(
    {200: RunView, 202: RunView},
    body=RerunRequest,
    headers={"Idempotency-Key": "Retrying with the same key returns the same new run."},
)
def rerun_run(run_id: str) -> tuple[Response, int]:
    """Start a new run of a finished run from `from_step` on, reusing the earlier steps'
    checkpoints (not run, not charged again); `inputs` replace the old inputs (a fork). 202 with
    the new run; 200 when an Idempotency-Key replays an earlier rerun."""
    principal = get_principal()
    principal.require_user()
    body = parse_body(RerunRequest)
    db = get_db()
    target = views.parse_run_id(run_id)
    started = rerun.rerun(
        db,
        get_store(),
        principal.rls_claims(),
        target,
        from_step=body.from_step,
        inputs=body.inputs,
        idempotency_key=idempotency_key(),
    )
    new = started.run
    if new.created:
        if started.owner != principal.user_id:
            audit_request(
                db,
                action="admin.run.rerun",
                outcome="success",
                actor_user_id=principal.user_id,
                subject=str(target),
                details={"owner": str(started.owner), "new_run": str(new.id)},
            )
        view = views.get_run(db, principal.rls_claims(), new.id)
        metrics.RUNS_SUBMITTED.labels(view.workflow_id).inc()
        assert new.event is not None
        get_publisher().publish(new.event)
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(new.id))
        return jsonify(view.model_dump(mode="json")), 202
    view = views.get_run(db, principal.rls_claims(), new.id)
    return jsonify(view.model_dump(mode="json")), 200
