"""Starting a `workflow` step's child run, from the engine's suspension (waits.suspend): the child
commits in the same transaction as the parent's wait (awaited) or the step's completion
(detached), and RunSuspended names it so execute_run publishes it after commit."""

from __future__ import annotations

from typing import Any, NoReturn

from psycopg.types.json import Jsonb

from conveyor import workflows
from conveyor.db import Connection, Database
from conveyor.errors import ConveyorError
from conveyor.events.run_events import STATUS_UPDATE, EventPublisher, RunEvent, append_events
from conveyor.runs import children
from conveyor.runs.new_runs import NewRun, ParentLink, insert_run
from conveyor.runs.resume import STEP_WAITING, step_waiting
from conveyor.runs.run_rows import ended_run, status_data
from conveyor.runs.step_rows import CompletedStep, mark_completed
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supervision import RunCancelled, RunSuspended
from conveyor.steps import WaitRequest

# Both fenced like a checkpoint: only this attempt of a running run, with no cancel asked for.
# Awaited: the run waits without a timer; the child's end resumes it (children.child_ended).
WAIT_SQL = """
update workflow_runs
   set status = 'waiting', lease_expires_at = null, waiting_since = now(), wake_at = null,
       updated_at = now()
 where id = %(id)s and attempt = %(attempt)s and status = 'running'
   and cancel_requested_at is null
returning *
"""
# Detached: the step is done; the run goes back to the queue to take its next step, as after a
# resume (the claim starts it), so the child and the parent are both published after commit.
REQUEUE_SQL = """
update workflow_runs r
   set status = 'queued', lease_expires_at = null, enqueued_at = now(), updated_at = now(),
       progress = (select least(1, (count(*) filter (where s.status = 'completed') + 1)::real
                                   / count(*))
                     from workflow_steps s where s.run_id = r.id)
 where id = %(id)s and attempt = %(attempt)s and status = 'running'
   and cancel_requested_at is null
returning *
"""


def suspend_for_child(
    db: Database,
    publisher: EventPublisher,
    claim: ClaimedRun,
    position: int,
    request: WaitRequest,
    spec_hash: str,
) -> NoReturn:
    """Start the child and commit the parent's wait for it (or, detached, the step's output
    {"run_id": child}); raise RunSuspended with the runs to publish. RunCancelled as suspend."""
    definition = _child_definition(request)
    params = {"id": claim.id, "attempt": claim.attempt}
    with db.transaction() as conn:
        run = conn.execute(REQUEUE_SQL if request.detached else WAIT_SQL, params).fetchone()
        if run is None:
            raise RunCancelled()
        child = insert_run(
            conn,
            user_id=claim.user_id,
            kind=definition.kind,
            workflow_id=definition.name,
            input=request.inputs or {},
            metadata={"parent_run_id": str(claim.id), "parent_step": position},
            steps=definition.step_rows(),
            idempotency_key=children.idempotency_key(claim.id, position),
            parent=ParentLink(claim.id, position, awaits=not request.detached),
        )
        if request.detached:
            events = _detached(conn, claim, run, position, child, spec_hash)
        else:
            events = _awaiting(conn, claim, run, position, request, child, spec_hash)
    publisher.publish(*events)
    if child.event is not None:
        publisher.publish(child.event)
    raise RunSuspended(enqueue=(child.id, claim.id) if request.detached else (child.id,))


def _child_definition(request: WaitRequest) -> workflows.Workflow:
    """The child's workflow with its inputs checked; ChildNotStarted ends the parent failed."""
    try:
        definition = workflows.get_workflow(str(request.workflow))
        definition.validate_input(request.inputs or {})
    except ConveyorError as exc:
        raise children.ChildNotStarted(
            f"child workflow {request.workflow!r} not started: {exc.message}"
        ) from exc
    return definition


def _awaiting(
    conn: Connection,
    claim: ClaimedRun,
    run: dict[str, Any],
    position: int,
    request: WaitRequest,
    child: NewRun,
    spec_hash: str,
) -> list[RunEvent]:
    wait = {**request.describe(), "child_run_id": str(child.id)}
    step = conn.execute(
        "update workflow_steps set status = 'waiting', wake_at = null, wait = %s, "
        "spec_hash = %s where run_id = %s and position = %s returning name",
        (Jsonb(wait), spec_hash, claim.id, position),
    ).fetchone()
    assert step is not None, "a claimed run has a row for every step"
    waiting = step_waiting(step["name"], position, None, wait)
    events = append_events(
        conn, claim.id, [(STEP_WAITING, waiting), (STATUS_UPDATE, status_data(run))]
    )
    if not child.created:
        # The child of an earlier suspension of this step (idempotency key): if it already
        # ended, its end found no parent waiting, so it resumes the parent now.
        ended = ended_run(conn, child.id)
        if ended is not None:
            for parent in children.child_ended(conn, ended):
                events += parent.events
    return events


def _detached(
    conn: Connection,
    claim: ClaimedRun,
    run: dict[str, Any],
    position: int,
    child: NewRun,
    spec_hash: str,
) -> list[RunEvent]:
    output = {"run_id": str(child.id)}
    step = CompletedStep(position, output, None, None, spec_hash)
    completed = mark_completed(conn, claim.owner(), step)
    return append_events(conn, claim.id, [*completed, (STATUS_UPDATE, status_data(run))])
