"""Work items, the statements: take the next one, renew its lease, give it back, and record how
it ended; the last item of a run to end queues the run for its coordinator. Every write is
fenced by the run's attempt (the run row, locked first as every run writer locks it) and by the
item's own attempt, so a lane whose item was taken over writes nothing.
docs/architecture.md, "Parallel branches and map"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor.db import Connection, Database
from conveyor.events.run_events import RunEvent, append_events
from conveyor.ledger.usage import record_step_usage
from conveyor.runs import fan_in
from conveyor.runs.fan_in import MAP_PROGRESS
from conveyor.runs.run_rows import lock_held
from conveyor.runs.step_rows import CompletedStep, mark_completed
from conveyor.runs.store import ClaimedRun, StepState
from conveyor.steps import LlmUsage

# The lowest pending item of the step, or one whose lane stopped renewing it (died): taken with
# its attempt counted, only while the run is still this lane's attempt and not asked to cancel.
TAKE_SQL = """
update run_work_items w
   set status = 'running', attempt = w.attempt + 1, started_at = coalesce(w.started_at, now()),
       lease_expires_at = now() + make_interval(secs => %(lease)s)
 where (w.run_id, w.position, w.item) = (
         select run_id, position, item from run_work_items
          where run_id = %(run)s and position = %(position)s
            and (status = 'pending' or (status = 'running' and lease_expires_at < now()))
          order by item limit 1
            for update skip locked)
   and exists (select 1 from workflow_runs r
                where r.id = %(run)s and r.attempt = %(attempt)s and r.status = 'running'
                  and r.cancel_requested_at is null)
returning w.item, w.attempt, w.input
"""


@dataclass
class TakenItem:
    """An item this lane holds; `attempt` fences its writes (a map item's attempt; a branch's
    step attempt is `step_attempt`)."""

    position: int
    item: int
    attempt: int
    input: Any
    step_attempt: int | None = None


@dataclass(frozen=True)
class ItemEnd:
    """How an item ended: its output (or error) and what its model calls consumed."""

    output: Any = None
    output_url: str | None = None
    usage: LlmUsage | None = None
    error: str | None = None
    error_code: str | None = None
    spec_hash: str | None = None

    @property
    def status(self) -> str:
        """`failed` when it has an error."""
        return "failed" if self.error is not None else "completed"


@dataclass
class Recorded:
    """What recording an item's end did: the events, and whether the run is to be queued for its
    coordinator (`resume`) or finished as cancelled (`cancelled`); `lost`: the run is not ours;
    `next`: the lane's next item, taken in the same transaction."""

    events: list[RunEvent] = field(default_factory=list)
    resume: bool = False
    cancelled: bool = False
    lost: bool = False
    next: TakenItem | None = None  # the lane's next item, when it asked for it


def load_claim(db: Database, run_id: UUID, attempt: int) -> ClaimedRun | None:
    """The run as its coordinator claimed it, while that attempt still holds it (a cancel asked
    for meanwhile is the lane's to settle: take finds nothing, settle_cancel ends it)."""
    with db.single_statement() as conn:
        row = conn.execute(
            """
            select r.id, r.user_id, r.kind, r.workflow_id, r.input, r.attempt, r.session_id,
                   r.started_at,
                   coalesce((select jsonb_agg(jsonb_build_object(
                               'position', s.position, 'name', s.name, 'status', s.status,
                               'attempt', s.attempt, 'output', s.output,
                               'output_url', s.output_url) order by s.position)
                               from workflow_steps s where s.run_id = r.id), '[]') as steps
              from workflow_runs r
             where r.id = %s and r.attempt = %s and r.status = 'running'
            """,
            (run_id, attempt),
        ).fetchone()
    if row is None:
        return None
    return ClaimedRun(
        **{key: row[key] for key in row if key != "steps"},
        steps=[StepState(**step) for step in row["steps"]],
    )


def take(
    db: Database, claim: ClaimedRun, position: int, *, branch: bool, lease_seconds: int
) -> TakenItem | None:
    """The step's next item, now this lane's; None when none is left (or the run is not ours).
    A branch counts an attempt on its step row, as the coordinator's claim would."""
    with db.transaction() as conn:
        row = conn.execute(
            TAKE_SQL,
            {
                "run": claim.id,
                "position": position,
                "attempt": claim.attempt,
                "lease": lease_seconds,
            },
        ).fetchone()
        if row is None:
            return None
        taken = TakenItem(position, row["item"], row["attempt"], row["input"])
        if branch:
            step = conn.execute(
                "update workflow_steps set attempt = attempt + 1, status = 'running', "
                "started_at = now() where run_id = %s and position = %s returning attempt",
                (claim.id, position),
            ).fetchone()
            assert step is not None
            taken.step_attempt = step["attempt"]
    return taken


def renew(db: Database, claim: ClaimedRun, taken: TakenItem, *, lease_seconds: int) -> None:
    """Extend the item's lease (with the run's, by the lane's watch)."""
    with db.transaction() as conn:
        conn.execute(
            "update run_work_items set lease_expires_at = now() + make_interval(secs => %s) "
            "where run_id = %s and position = %s and item = %s and attempt = %s "
            "and status = 'running'",
            (lease_seconds, claim.id, taken.position, taken.item, taken.attempt),
        )


def count_attempt(db: Database, claim: ClaimedRun, taken: TakenItem) -> bool:
    """Count a map item's next attempt (after a retryable failure); False if it is not ours."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            update run_work_items w set attempt = w.attempt + 1
              from workflow_runs r
             where w.run_id = %s and w.position = %s and w.item = %s and w.attempt = %s
               and w.status = 'running'
               and r.id = w.run_id and r.attempt = %s and r.status = 'running'
            returning w.attempt
            """,
            (claim.id, taken.position, taken.item, taken.attempt, claim.attempt),
        ).fetchone()
    if row is None:
        return False
    taken.attempt = row["attempt"]
    return True


def give_back(db: Database, claim: ClaimedRun, taken: TakenItem, *, uncount: bool) -> bool:
    """This worker is stopping: the item is pending again (its attempt given back when it was
    interrupted cleanly), for a lane published again. False: it was not ours any more."""
    with db.transaction() as conn:
        row = conn.execute(
            "update run_work_items set status = 'pending', lease_expires_at = null, "
            "attempt = attempt - case when %s then 1 else 0 end "
            "where run_id = %s and position = %s and item = %s and attempt = %s "
            "and status = 'running' returning item",
            (uncount, claim.id, taken.position, taken.item, taken.attempt),
        ).fetchone()
        if row is not None and uncount and taken.step_attempt is not None:
            conn.execute(
                "update workflow_steps set attempt = attempt - 1 "
                "where run_id = %s and position = %s",
                (claim.id, taken.position),
            )
    return row is not None


def record_end(
    db: Database,
    claim: ClaimedRun,
    taken: TakenItem,
    end: ItemEnd,
    *,
    fail_fast: bool,
    progress: bool,
    lease_seconds: int,
    take_next: bool = False,
) -> Recorded:
    """Record the item's end with its output and charges in one transaction; a failure that
    fails fast cancels the items nobody took yet; the run's last open item queues the run.
    With take_next (a map's lane), the lane's next item is taken in the same transaction."""
    with db.transaction() as conn:
        # The run row's lock orders the ends of two items (the fan-in); the lane's watch renews
        # the lease, so the row is locked here, not rewritten for every item.
        run = lock_held(conn, claim.id, claim.attempt)
        if run is None:
            return Recorded(lost=True)
        item = conn.execute(
            """
            update run_work_items
               set status = %s, output = %s, output_url = %s, error = %s, error_code = %s,
                   finished_at = now(), lease_expires_at = null
             where run_id = %s and position = %s and item = %s and attempt = %s
               and status = 'running'
            returning item
            """,
            (
                end.status,
                Jsonb(end.output) if end.output is not None else None,
                end.output_url,
                end.error,
                end.error_code,
                claim.id,
                taken.position,
                taken.item,
                taken.attempt,
            ),
        ).fetchone()
        if item is None:
            return Recorded()  # taken over after its lease ran out: the other lane's end counts
        pending = _charge_or_cancel(conn, claim, taken, end, fail_fast=fail_fast)
        if run["cancel_requested_at"] is not None:
            _cancel_pending(conn, claim)
        # The partial index answers this at any size; counting the run's items here would make
        # every item of a 10,000-item map cost O(N) under the run row's lock (bench/map_fanout).
        still_open = fan_in.items_in(conn, claim.id, ("pending", "running"))
        recorded = Recorded()
        if taken.step_attempt is None and (progress or end.status == "failed" or not still_open):
            pending.append((MAP_PROGRESS, fan_in.progress(conn, claim.id, taken.position)))
        if not still_open and run["cancel_requested_at"] is None:
            ended, recorded.resume = fan_in.none_open(
                conn, claim.id, taken.position, is_map=taken.step_attempt is None, running=True
            )
            pending += ended
        elif not still_open:
            recorded.cancelled = True
        elif take_next:
            params = {
                "run": claim.id,
                "position": taken.position,
                "attempt": claim.attempt,
                "lease": lease_seconds,
            }
            row = conn.execute(TAKE_SQL, params).fetchone()
            if row is not None:
                recorded.next = TakenItem(taken.position, row["item"], row["attempt"], row["input"])
        if pending:
            recorded.events = append_events(conn, claim.id, pending)
    return recorded


def _charge_or_cancel(
    conn: Connection, claim: ClaimedRun, taken: TakenItem, end: ItemEnd, *, fail_fast: bool
) -> list[tuple[str, dict[str, Any]]]:
    """A completed branch's checkpoint or a map item's charge; after a failure that fails fast,
    the items nobody took are cancelled. The events to append."""
    owner = claim.owner()
    if end.status == "completed" and taken.step_attempt is not None:
        step = CompletedStep(taken.position, end.output, end.output_url, end.usage, end.spec_hash)
        return mark_completed(conn, owner, step)
    if end.status == "completed" and end.usage is not None:
        return record_step_usage(
            conn,
            owner,
            position=taken.position,
            attempt=taken.attempt,
            usage=end.usage,
            item=taken.item,
        )
    if end.status == "failed" and fail_fast:
        _cancel_pending(conn, claim)
    return []


def _cancel_pending(conn: Connection, claim: ClaimedRun) -> None:
    """The run's items nobody took will not run (a failure failing fast, a cancel)."""
    fan_in.drop_unstarted(conn, claim.id)


def settle_cancel(db: Database, claim: ClaimedRun) -> bool:
    """A lane found no item to take: if a cancel was asked for, the items nobody took are
    cancelled; True when none is left running either, so this lane records the run's cancel."""
    with db.transaction() as conn:
        run = lock_held(conn, claim.id, claim.attempt)
        if run is None or run["cancel_requested_at"] is None:
            return False
        _cancel_pending(conn, claim)
        running = conn.execute(
            "select exists (select 1 from run_work_items where run_id = %s "
            "and status = 'running') as running",
            (claim.id,),
        ).fetchone()
    assert running is not None
    return not running["running"]


def stop_for_cancel(db: Database, claim: ClaimedRun, taken: TakenItem) -> bool:
    """The run was asked to cancel: this item and every one not yet taken end `cancelled`.
    True when no item is left running, so this lane records the run's cancel."""
    with db.transaction() as conn:
        if lock_held(conn, claim.id, claim.attempt) is None:
            return False
        conn.execute(
            """
            update run_work_items set status = 'cancelled', finished_at = now(),
                   lease_expires_at = null
             where run_id = %s
               and (status = 'pending'
                    or (position = %s and item = %s and attempt = %s and status = 'running'))
            """,
            (claim.id, taken.position, taken.item, taken.attempt),
        )
        running = conn.execute(
            "select count(*) as n from run_work_items where run_id = %s and status = 'running'",
            (claim.id,),
        ).fetchone()
    assert running is not None
    return bool(running["n"] == 0)
