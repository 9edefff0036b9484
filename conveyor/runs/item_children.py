"""A map's items that are child workflows (`step: {kind: workflow, ...}`): a lane starts the
item's child run in one transaction with the item `waiting` for it (fenced like an item's end),
and the child's end, however it ends, records the item in its own transaction
(`children.child_ended` calls item_child_ended). A run whose only unfinished items wait for
children waits itself (fan_in.none_open). docs/architecture.md, "Parallel branches and map"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor import workflows
from conveyor.db import Connection, Database
from conveyor.errors import ConveyorError
from conveyor.events.run_events import RunEvent, append_events
from conveyor.runs import fan_in
from conveyor.runs.fan_in import MAP_PROGRESS
from conveyor.runs.new_runs import ParentLink, insert_run
from conveyor.runs.resume import Resumed
from conveyor.runs.run_rows import ended_run, lock_held


@dataclass(frozen=True)
class RunHeld:
    """The run a lane holds (a ClaimedRun has these): who owns it, under which attempt."""

    id: UUID
    user_id: UUID
    attempt: int


@dataclass
class ChildItemStarted:
    """What starting an item's child did: the events, the child to publish (when new), whether
    the run was queued (its child had ended already and nothing else is open), and `lost`."""

    events: list[RunEvent] = field(default_factory=list)
    child: UUID | None = None
    resume: bool = False
    lost: bool = False
    cancelled: bool = False  # a cancel was asked for: nothing started, the lane settles it


def child_definition(workflow: str, inputs: dict[str, Any]) -> workflows.Workflow:
    """The item's child workflow with its inputs checked (ConveyorError says what is wrong)."""
    definition = workflows.get_workflow(workflow)
    definition.validate_input(inputs)
    return definition


def start_child_item(
    db: Database,
    claim: RunHeld,
    position: int,
    item: int,
    item_attempt: int,
    definition: workflows.Workflow,
    inputs: dict[str, Any],
) -> ChildItemStarted:
    """Start the item's child run (once: keyed by run, step and item) with the item `waiting`
    for it; the run waits too when no item is left pending or running."""
    with db.transaction() as conn:
        run = lock_held(conn, claim.id, claim.attempt)
        if run is None:
            return ChildItemStarted(lost=True)
        if run["cancel_requested_at"] is not None:
            return ChildItemStarted(cancelled=True)
        child = insert_run(
            conn,
            user_id=claim.user_id,
            kind="workflow",
            workflow_id=definition.name,
            input=inputs,
            metadata={"parent_run_id": str(claim.id), "parent_item": item},
            steps=definition.step_rows(),
            idempotency_key=f"conveyor:child:{claim.id}:{position}:{item}",
            parent=ParentLink(claim.id, position, awaits=True, item=item),
        )
        waiting = conn.execute(
            "update run_work_items set status = 'waiting', child_run_id = %s, "
            "lease_expires_at = null where run_id = %s and position = %s and item = %s "
            "and attempt = %s and status = 'running' returning item",
            (child.id, claim.id, position, item, item_attempt),
        ).fetchone()
        if waiting is None:
            return ChildItemStarted(lost=True)  # taken over meanwhile: rolled back with this
        started = ChildItemStarted(child=child.id if child.created else None)
        events: list[tuple[str, dict[str, Any]]] = []
        if child.event is not None:
            started.events.append(child.event)
        ended = ended_run(conn, child.id)
        if ended is not None:
            # The child of an earlier take of this item ended while nobody waited: record it.
            for resumed in item_child_ended(conn, ended):
                started.events += resumed.events
                started.resume = started.resume or resumed.queued
        if not started.resume and not fan_in.items_in(conn, claim.id, ("pending", "running")):
            events, started.resume = fan_in.none_open(
                conn, claim.id, position, is_map=True, running=True
            )
        if events:
            started.events += append_events(conn, claim.id, events)
    return started


def item_child_ended(conn: Connection, child: dict[str, Any]) -> list[Resumed]:
    """In the transaction that ended `child`: its item completes with the child's output (or
    fails); a failure that fails fast cancels the items nobody took; with no item left open the
    run is queued for its coordinator. Empty when the run or the item moved on."""
    run = conn.execute(
        "select * from workflow_runs where id = %s and status in ('running', 'waiting') "
        "for no key update",
        (child["parent_run_id"],),
    ).fetchone()
    if run is None:
        return []
    position = child["parent_step"]
    completed = child["status"] == "completed"
    error = None
    if not completed:
        error = f"child run {child['id']} ({child['workflow_id']}) ended {child['status']}"
        error += f": {child['error']}" if child.get("error") else ""
    code = (
        None
        if completed
        else ("CHILD_CANCELLED" if child["status"] == "cancelled" else "CHILD_FAILED")
    )
    item = conn.execute(
        "update run_work_items set status = %s, output = %s, output_url = %s, error = %s, "
        "error_code = %s, finished_at = now() where run_id = %s and position = %s and item = %s "
        "and status = 'waiting' and child_run_id = %s returning item",
        (
            "completed" if completed else "failed",
            Jsonb(child["output"]) if completed and child["output"] is not None else None,
            child["output_url"] if completed else None,
            error,
            code,
            run["id"],
            position,
            child["parent_item"],
            child["id"],
        ),
    ).fetchone()
    if item is None:
        return []
    if not completed and _fails_fast(run["workflow_id"], position):
        # The map fails: nothing more is started, nothing more awaited (its other children run
        # to their end; their items are closed, so their ends change nothing).
        fan_in.drop_unstarted(conn, run["id"])
    events: list[tuple[str, dict[str, Any]]] = []
    status = run["status"]
    if not fan_in.items_in(conn, run["id"], ("pending", "running")):
        # No lane has work left (it ended, or fail fast dropped it): park or queue the run here,
        # whether it was parked or still `running` (a coordinator or lane holding it is fenced).
        events.append((MAP_PROGRESS, fan_in.progress(conn, run["id"], position)))
        ended, queued = fan_in.none_open(
            conn, run["id"], position, is_map=True, running=run["status"] == "running"
        )
        events += ended
        status = "queued" if queued else status
    elif not completed:
        events.append((MAP_PROGRESS, fan_in.progress(conn, run["id"], position)))
    appended = append_events(conn, run["id"], events) if events else []
    return [Resumed(run["id"], run["user_id"], status, "", appended)]


def _fails_fast(workflow_id: str, position: int) -> bool:
    """Whether the map at position fails at its first failed item (a changed definition: yes)."""
    try:
        spec = workflows.get(workflow_id).steps[position]
    except (ConveyorError, IndexError):
        return True
    return spec.config.get("on_failure") != "collect"
