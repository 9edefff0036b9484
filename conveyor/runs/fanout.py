"""Parallel branches and `map`, the coordinator's side: when several steps are ready at once, or a
map step is reached, the run's work is written as work items and handed to lanes (the Celery task
`runs.execute_lane`, conveyor/runs/lanes.py) on any worker; the coordinator's attempt ends.

The run stays `running` meanwhile and its lease is renewed by the lanes, so the reaper hands a run
whose lanes all died back to a coordinator, which dispatches the unfinished items again under a
new attempt (the old lanes' writes are fenced off). docs/architecture.md, "Parallel branches".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from uuid import UUID

from conveyor.db import Connection, Database
from conveyor.events.run_events import EventPublisher, append_events
from conveyor.runs import fan_in
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supervision import LeaseLost, RunCancelled, RunInterrupted, RunSuspended
from conveyor.steps import StepFailure
from conveyor.steps.map import MAP, MapConfig
from conveyor.workflows.definitions import StepSpec, Workflow

BRANCHES_STARTED = "branches_started"
MAP_STARTED = "map_started"
UNFINISHED = ("pending", "running")


@dataclass(frozen=True)
class Lane:
    """One lane to start: it takes the step's items one after another until none is left."""

    run_id: UUID
    attempt: int
    position: int


class RunFannedOut(RunInterrupted):
    """The run's work was handed to lanes (committed): this attempt ends; start `lanes`."""

    def __init__(self, lanes: tuple[Lane, ...]) -> None:
        super().__init__()
        self.lanes = lanes


@dataclass(frozen=True)
class ItemFailure:
    """The first item of a step that failed, as the step's failure."""

    position: int
    item: int
    error: str
    error_code: str


@dataclass
class ItemState:
    """What the run's work items say, read once when a coordinator starts."""

    unfinished: dict[int, int]  # position -> items pending or running
    waiting: int  # items waiting for their child runs
    failures: dict[int, ItemFailure]  # position -> its first failed item
    positions: set[int]  # every position that has items

    def run_failure(self, plan: list[StepSpec]) -> ItemFailure | None:
        """The failed branch, or failed item of a fail-fast map, that fails the run (collected
        maps do not), its error naming the step."""
        for failure in self.failures.values():
            spec = plan[failure.position]
            if spec.kind == MAP and spec.config.get("on_failure") == "collect":
                continue
            # A branch's error names its step already; a map item's names only the item.
            prefix = f"step {spec.name!r}: " if spec.kind == MAP else ""
            return ItemFailure(
                failure.position,
                failure.item,
                f"{prefix}{failure.error}",
                failure.error_code or "STEP_FAILED",
            )
        return None


def may_fan_out(workflow: Workflow) -> bool:
    """True when the definition has a map or steps that can run side by side; only then does a
    coordinator read the work items (a plain list of steps pays nothing)."""
    previous: tuple[str, ...] = ()
    for spec in workflow.steps:
        if spec.kind == MAP or workflow.needs(spec.name) != previous:
            return True
        previous = (spec.name,)
    return False


def item_state(db: Database, run_id: UUID) -> ItemState:
    """The run's work items by position: how many are unfinished, and each step's first failure."""
    with db.single_statement() as conn:
        rows = conn.execute(
            """
            select position, count(*) filter (where status in ('pending', 'running')) as open,
                   count(*) filter (where status = 'waiting') as waiting,
                   (array_agg(jsonb_build_object('item', item, 'error', error,
                                                 'code', error_code) order by item)
                      filter (where status = 'failed'))[1] as failed
              from run_work_items where run_id = %s group by position
            """,
            (run_id,),
        ).fetchall()
    state = ItemState(unfinished={}, waiting=0, failures={}, positions=set())
    for row in rows:
        state.positions.add(row["position"])
        state.waiting += row["waiting"]
        if row["open"]:
            state.unfinished[row["position"]] = row["open"]
        if row["failed"] is not None:
            failed = row["failed"]
            state.failures[row["position"]] = ItemFailure(
                row["position"], failed["item"], failed["error"] or "", failed["code"] or ""
            )
    return state


def after_lanes(
    db: Database, claim: ClaimedRun, workflow: Workflow, started: int, lease_seconds: int
) -> ItemState:
    """A coordinator starting on a run that may have fanned out: unfinished items are dispatched
    again (RunFannedOut), items only waiting for children park the run (RunSuspended); else the
    state the coordinator goes on with (its run_failure, the positions that have items)."""
    state = item_state(db, claim.id)
    if state.unfinished:
        dispatch_again(db, claim, workflow, state, started, lease_seconds=lease_seconds)
    if state.waiting:
        _park(db, claim, lease_seconds)
    return state


def _park(db: Database, claim: ClaimedRun, lease_seconds: int) -> NoReturn:
    """Only items waiting for child runs are left (their lanes ended, or died): the run waits
    for them, holding no worker, and the last child's end queues it (item_children.py); if it
    ended meanwhile, the run is queued again at once."""
    with db.transaction() as conn:
        _hold(conn, claim, lease_seconds)
        # Read again under the row's lock: the last child may have ended since item_state.
        events, queued = fan_in.none_open(conn, claim.id, -1, is_map=False, running=True)
        append_events(conn, claim.id, events)
    # Queued (nothing left to wait for): publish it again, and its next claim goes on.
    raise RunSuspended(enqueue=(claim.id,) if queued else ())


def _hold(conn: Connection, claim: ClaimedRun, lease_seconds: int) -> dict[str, Any]:
    """Renew the run's lease, fenced by the attempt; LeaseLost when it is no longer ours,
    RunCancelled when a cancel was asked for (nothing is dispatched; finish_run records it)."""
    run = conn.execute(
        """
        update workflow_runs
           set lease_expires_at = now() + make_interval(secs => %s), heartbeat_at = now(),
               updated_at = now()
         where id = %s and attempt = %s and status = 'running'
        returning *
        """,
        (lease_seconds, claim.id, claim.attempt),
    ).fetchone()
    if run is None:
        raise LeaseLost()
    if run["cancel_requested_at"] is not None:
        raise RunCancelled()
    return dict(run)


def dispatch_branches(
    db: Database,
    publisher: EventPublisher,
    claim: ClaimedRun,
    branches: list[tuple[int, StepSpec]],
    *,
    lease_seconds: int,
) -> NoReturn:
    """Hand the ready steps to one lane each and end the coordinator's attempt. The first of
    them was started (its attempt counted) by the claim or the last checkpoint: a lane counts
    attempts when it takes a branch, so that count is given back here."""
    positions = [position for position, _ in branches]
    with db.transaction() as conn:
        _hold(conn, claim, lease_seconds)
        conn.execute(
            "insert into run_work_items (run_id, position, item) "
            "select %s, p, 0 from unnest(%s::integer[]) as p",
            (claim.id, positions),
        )
        conn.execute(
            """
            update workflow_steps
               set attempt = attempt - case when status = 'running' then 1 else 0 end,
                   status = 'running', started_at = coalesce(started_at, now())
             where run_id = %s and position = any(%s)
            """,
            (claim.id, positions),
        )
        events = append_events(
            conn,
            claim.id,
            [(BRANCHES_STARTED, {"steps": [spec.name for _, spec in branches]})],
        )
    publisher.publish(*events)
    raise RunFannedOut(tuple(Lane(claim.id, claim.attempt, position) for position in positions))


def dispatch_map(
    db: Database,
    publisher: EventPublisher,
    claim: ClaimedRun,
    position: int,
    spec: StepSpec,
    items: list[Any],
    *,
    lease_seconds: int,
) -> NoReturn:
    """Write one work item per list entry and start `concurrency` lanes over them."""
    config = MapConfig.model_validate(spec.config)
    with db.transaction() as conn:
        _hold(conn, claim, lease_seconds)
        conn.execute(
            """
            insert into run_work_items (run_id, position, item, input)
            select %s, %s, (ordinality - 1)::integer, value
              from jsonb_array_elements(%s::jsonb) with ordinality
            """,
            (claim.id, position, json.dumps(items)),
        )
        started = {
            "step": spec.name,
            "position": position,
            "items": len(items),
            "concurrency": config.concurrency,
            "on_failure": config.on_failure,
        }
        events = append_events(conn, claim.id, [(MAP_STARTED, started)])
    publisher.publish(*events)
    lanes = min(config.concurrency, len(items))
    raise RunFannedOut(tuple(Lane(claim.id, claim.attempt, position) for _ in range(lanes)))


def dispatch_again(
    db: Database,
    claim: ClaimedRun,
    workflow: Workflow,
    state: ItemState,
    started: int,
    *,
    lease_seconds: int,
) -> NoReturn:
    """A coordinator found unfinished items (their lanes died, or a worker handed the run back):
    put the taken ones back and start lanes for them under this attempt."""
    plan = workflow.steps
    with db.transaction() as conn:
        _hold(conn, claim, lease_seconds)
        conn.execute(
            "update run_work_items set status = 'pending', lease_expires_at = null "
            "where run_id = %s and status = 'running'",
            (claim.id,),
        )
        if started in state.positions and plan[started].kind != MAP:
            # The claim counted an attempt of a branch step; its lane counts its own.
            conn.execute(
                "update workflow_steps set attempt = attempt - 1 "
                "where run_id = %s and position = %s and attempt > 0",
                (claim.id, started),
            )
    lanes: list[Lane] = []
    for position, open_items in sorted(state.unfinished.items()):
        spec = plan[position]
        count = 1
        if spec.kind == MAP:
            count = min(MapConfig.model_validate(spec.config).concurrency, open_items)
        lanes += [Lane(claim.id, claim.attempt, position)] * count
    raise RunFannedOut(tuple(lanes))


def map_output(
    db: Database,
    claim: ClaimedRun,
    position: int,
    spec: StepSpec,
    load: Callable[[Any, str | None], Any],
) -> dict[str, Any]:
    """A finished map's output, `{"items": [...], "failed": [...]}` in input order (a failed or
    cancelled item's entry is null; `load` fetches an offloaded one); StepFailure when the map
    fails fast and an item failed."""
    with db.single_statement() as conn:
        rows = conn.execute(
            "select item, status, output, output_url, error, error_code from run_work_items "
            "where run_id = %s and position = %s order by item",
            (claim.id, position),
        ).fetchall()
    failed = [
        {"index": row["item"], "error": row["error"], "error_code": row["error_code"]}
        for row in rows
        if row["status"] == "failed"
    ]
    if failed and spec.config.get("on_failure") != "collect":
        first = failed[0]
        raise StepFailure(
            f"map item {first['index']} failed: {first['error']}",
            retryable=False,
            code=first["error_code"] or "MAP_ITEM_FAILED",
        )
    items = [
        load(row["output"], row["output_url"]) if row["status"] == "completed" else None
        for row in rows
    ]
    return {"items": items, "failed": failed}
