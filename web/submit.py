"""Submitting a run, shared by invoke and workflow execute: who, idempotency, store, publish."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from conveyor import metrics, runs
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.errors import Forbidden
from conveyor.outbound import endpoints
from conveyor.outbound.url_safety import check_webhook_url
from conveyor.runs import sessions
from conveyor.runs.store import NewRun
from conveyor.workflows.definitions import Workflow
from web.body import idempotency_key
from web.context import get_db, get_enqueuer, get_principal, get_publisher, get_settings


def submit_run(
    definition: Workflow,
    *,
    inputs: dict[str, Any],
    user_id: UUID | None,
    metadata: dict[str, Any],
    session_id: UUID | None,
    webhook_url: str | None = None,
) -> NewRun:
    """Validate, store the run (the outbox) and publish it after commit; a repeated
    Idempotency-Key returns the first run."""
    caller = get_principal().require_user()
    if user_id is not None and user_id != caller:
        raise Forbidden("You can only start runs as yourself; omit user_id.")
    definition.validate_input(inputs)
    key = idempotency_key()
    db = get_db()
    if session_id is not None:
        sessions.require_session_owner(db, caller, session_id)
    if webhook_url is not None:
        check_webhook_url(webhook_url, allow_private=get_settings().allow_private_webhooks)
        # Created now so the owner can fetch it before the first delivery is signed.
        endpoints.signing_secret(db, caller)
    run = runs.create_run(
        db,
        user_id=caller,
        kind=definition.kind,
        workflow_id=definition.name,
        input=inputs,
        metadata=metadata,
        steps=definition.step_rows(),
        idempotency_key=key,
        session_id=session_id,
        admit=True,
        webhook_url=webhook_url,
    )
    if run.created:
        metrics.RUNS_SUBMITTED.labels(definition.name).inc()
        assert run.event is not None
        get_publisher().publish(run.event)
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(run.id))
    return run
