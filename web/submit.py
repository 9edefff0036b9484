"""Submitting a run, shared by invoke and workflow execute: who, idempotency, store, publish,
and the bounded wait of a synchronous submit."""

from __future__ import annotations

from functools import partial
from typing import Any
from uuid import UUID

from conveyor import metrics, runs
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Connection
from conveyor.errors import Forbidden, InvalidInput
from conveyor.events.run_events import RunEvent
from conveyor.ledger.accounts import require_known_user
from conveyor.outbound import endpoints
from conveyor.outbound.url_safety import check_webhook_url
from conveyor.runs import sessions, views, waiting
from conveyor.runs.dispatch import (
    Hold,
    capped_priority,
    dispatch_in,
    hold_for,
    scoped_to_user,
)
from conveyor.runs.exclusive import settle_key
from conveyor.runs.payloads import FINAL_STATUSES, RUNS_WRITE_SCOPE, RunView
from conveyor.runs.store import NewRun
from conveyor.workflows.definitions import ConcurrencySpec, DebounceSpec, SingletonSpec, Workflow
from web.auth import audit_request
from web.body import idempotency_key
from web.context import get_db, get_enqueuer, get_principal, get_publisher, get_settings


def run_owner(user_id: UUID | None) -> UUID:
    """Whose run this is: the calling user (a `user_id` must be theirs), or for a service token
    with scope `runs:write` the existing user its body names."""
    principal = get_principal()
    if principal.is_service:
        principal.require_scope(RUNS_WRITE_SCOPE)
        if user_id is None:
            raise InvalidInput("A service token starts runs for a user: send user_id.")
        # A mistyped id must not open an account (and grant credits) nobody owns.
        require_known_user(get_db(), user_id)
        return user_id
    caller = principal.require_user()
    if user_id is not None and user_id != caller:
        raise Forbidden("You can only start runs as yourself; omit user_id.")
    return caller


def owner_claims(user_id: UUID | None) -> dict[str, Any]:
    """The RLS claims to read a submitted run with: the caller's, or for a service token those
    of the user it submitted for (submit_run checked that user)."""
    principal = get_principal()
    if not principal.is_service or user_id is None:
        return principal.rls_claims()
    return {"sub": str(user_id), "role": "authenticated", "email": None, "app_metadata": {}}


def await_outcome(run: NewRun, user_id: UUID | None, *, wait: bool) -> tuple[str, RunView | None]:
    """(status, the run's view when it ended); with `wait`, first wait for the end, bounded by
    WORKFLOW_WAIT_SECONDS. `user_id` is the body's, as given to submit_run."""
    status = run.status
    if wait and status not in FINAL_STATUSES:
        wait = get_settings().workflow_wait_seconds
        status = waiting.wait_for_final(get_db(), get_publisher(), run.id, wait)
    if status not in FINAL_STATUSES:
        return status, None
    return status, views.get_run(get_db(), owner_claims(user_id), run.id)


def submit_run(
    definition: Workflow,
    *,
    inputs: dict[str, Any],
    user_id: UUID | None,
    metadata: dict[str, Any],
    session_id: UUID | None,
    webhook_url: str | None = None,
    concurrency: ConcurrencySpec | None = None,
    priority: int | None = None,
    singleton: SingletonSpec | None = None,
    debounce: DebounceSpec | None = None,
) -> NewRun:
    """Validate, store the run (the outbox) and publish it after commit; a repeated
    Idempotency-Key returns the first run. A run with a concurrency key or a priority (the
    body's, else the definition's) is held, and what the dispatcher picks is published."""
    caller = run_owner(user_id)
    definition.validate_input(inputs)
    principal = get_principal()
    if not (principal.is_service or principal.is_admin):
        # A user's own keys are literal and theirs alone; their priority cannot outrank the
        # definition's (services and admins set keys and priority as operators do).
        concurrency, singleton, debounce = (
            scoped_to_user(caller, concurrency),
            scoped_to_user(caller, singleton),
            scoped_to_user(caller, debounce),
        )
        priority = capped_priority(priority, definition.priority)
    # The body's flow control replaces the definition's as a whole.
    given = concurrency or singleton or debounce
    hold = hold_for(
        concurrency if given else definition.concurrency,
        priority if priority is not None else definition.priority,
        {"inputs": inputs, "user_id": str(caller), "metadata": metadata,
         "session_id": str(session_id) if session_id else None},
        singleton if given else definition.singleton,
        debounce if given else definition.debounce,
    )  # fmt: skip
    cancelled: list[RunEvent] = []
    dispatched: list[UUID] = []
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
        hold=hold,
        prepare=partial(hold_run, hold, cancelled, dispatched) if hold is not None else None,
    )
    get_publisher().publish(*cancelled)
    if run.created:
        if get_principal().is_service:
            audit_request(
                db,
                action="service.runs.submit",
                outcome="success",
                subject=str(caller),
                details={"service": get_principal().subject, "run_id": str(run.id)},
            )
        metrics.RUNS_SUBMITTED.labels(definition.name).inc()
        assert run.event is not None
        get_publisher().publish(run.event)
        if hold is None:
            get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(run.id))
        else:
            for run_id in dispatched:
                get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(run_id))
    return run


def hold_run(
    hold: Hold, cancelled: list[RunEvent], dispatched: list[UUID], conn: Connection, run_id: UUID
) -> None:
    """In the submit's transaction: apply a singleton or debounce key (the runs it cancelled to
    `cancelled`), then dispatch (to `dispatched`): one commit for both."""
    cancelled.extend(settle_key(conn, run_id, hold))
    dispatched.extend(dispatch_in(conn, get_settings().dispatch_window))
