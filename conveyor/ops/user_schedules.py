"""Schedules through the API: a user's workflow with its inputs on a cron expression in an IANA
timezone (`/api/schedules`). The beat job `fire_schedules` starts one run per due period: the
schedule's row is locked, the run inserted with its admission (credits, limits) and an
idempotency key naming the schedule and the period, and the next due time set, in one
transaction. docs/architecture.md, "Schedules through the API"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from cronsim import CronSim, CronSimError
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from conveyor import workflows
from conveyor.constants import DISPATCH_WINDOW
from conveyor.db import Connection, Database
from conveyor.errors import BadRequest, ConveyorError, NotFound, ServiceUnavailable
from conveyor.events.run_events import RunEvent
from conveyor.pagination import Listing, user_page
from conveyor.payload import Payload
from conveyor.runs.dispatch import dispatch_in, hold_for
from conveyor.runs.exclusive import settle_key
from conveyor.runs.new_runs import insert_run

log = structlog.get_logger(__name__)

TASK_FIRE_SCHEDULES = "maintenance.fire_schedules"
FIRE_EVERY_SECONDS = 15


class ScheduleNotFound(NotFound):
    """No such schedule of the caller's."""

    code = "SCHEDULE_NOT_FOUND"


class InvalidCron(BadRequest):
    """The cron expression does not parse."""

    code = "INVALID_CRON"


class InvalidTimezone(BadRequest):
    """The timezone is not an IANA name this server knows."""

    code = "INVALID_TIMEZONE"


class ScheduleCreate(Payload):
    """`POST /api/schedules`: the workflow and its inputs, when (five-field cron, in `timezone`),
    and whether it starts paused."""

    workflow_id: str = Field(min_length=1, max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    cron: str = Field(min_length=9, max_length=100)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    paused: bool = False


class ScheduleUpdate(Payload):
    """`PATCH /api/schedules/<id>`: any of inputs, cron, timezone; `paused` pauses or resumes."""

    inputs: dict[str, Any] | None = None
    cron: str | None = Field(default=None, min_length=9, max_length=100)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    paused: bool | None = None


class ScheduleView(BaseModel):
    """A schedule as its owner sees it, with when it fires next and how its last period went."""

    id: UUID
    workflow_id: str
    inputs: dict[str, Any]
    cron: str
    timezone: str
    paused: bool
    next_due_at: datetime
    last_fired_at: datetime | None
    last_run_id: UUID | None
    last_error: str | None
    last_error_code: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScheduleView:
        """The view of a `schedules` row."""
        return cls(**{**row, "inputs": row["input"]})


SCHEDULES = Listing(
    table="schedules",
    columns="*",
    time_column="created_at",
    id_type="uuid",
    where="user_id = %(user)s",
)


def next_due(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time after `after` the expression names, in UTC (cronsim: a local time skipped by
    DST fires at the jump, a local time repeated by DST fires once)."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidTimezone(
            f"{timezone!r} is not an IANA timezone (e.g. 'America/New_York', 'UTC')"
        ) from None
    if len(cron.split()) != 5:  # cronsim also takes a sixth field, seconds: not offered here
        raise InvalidCron(f"{cron!r} must have five fields: minute hour day month weekday")
    try:
        local = next(CronSim(cron, after.astimezone(zone)))
    except (CronSimError, StopIteration) as exc:
        raise InvalidCron(
            f"{cron!r} is not a cron expression with five fields "
            f"(minute hour day month weekday): {exc}"
        ) from None
    return local.astimezone(UTC)


def latest_due(cron: str, timezone: str, now: datetime) -> datetime:
    """The last time at or before `now` the expression names, in UTC."""
    start = (now + timedelta(microseconds=1)).astimezone(ZoneInfo(timezone))
    return next(CronSim(cron, start, reverse=True)).astimezone(UTC)


def _checked_workflow(workflow_id: str, inputs: dict[str, Any]) -> None:
    """UnknownWorkflow or InvalidInput, as a submit would answer."""
    workflows.get_workflow(workflow_id).validate_input(inputs)


def create_schedule(
    db: Database, user_id: UUID, body: ScheduleCreate, now: datetime
) -> ScheduleView:
    """A new schedule of user_id's, due next after now."""
    _checked_workflow(body.workflow_id, body.inputs)
    due = next_due(body.cron, body.timezone, now)
    with db.transaction() as conn:
        row = conn.execute(
            "insert into schedules (user_id, workflow_id, input, cron, timezone, paused, "
            "next_due_at) values (%s, %s, %s, %s, %s, %s, %s) returning *",
            (user_id, body.workflow_id, Jsonb(body.inputs), body.cron, body.timezone,
             body.paused, due),
        ).fetchone()  # fmt: skip
    assert row is not None
    return ScheduleView.from_row(row)


def list_schedules(
    db: Database, claims: dict[str, Any], *, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[ScheduleView], str | None]:
    """The caller's schedules under RLS, newest first."""
    return user_page(
        db,
        claims,
        SCHEDULES,
        ScheduleView.from_row,
        params={"user": user_id},
        limit=limit,
        cursor=cursor,
    )


def get_schedule(db: Database, user_id: UUID, schedule_id: UUID) -> ScheduleView:
    """One of user_id's schedules, or ScheduleNotFound."""
    with db.transaction() as conn:
        return ScheduleView.from_row(_own(conn, user_id, schedule_id))


def update_schedule(
    db: Database, user_id: UUID, schedule_id: UUID, body: ScheduleUpdate, now: datetime
) -> ScheduleView:
    """Change a schedule; a new cron or timezone, or a resume, sets the next due time from now
    (periods missed while paused are not fired)."""
    with db.transaction() as conn:
        row = _own(conn, user_id, schedule_id, lock=True)
        inputs = body.inputs if body.inputs is not None else row["input"]
        _checked_workflow(row["workflow_id"], inputs)
        cron = body.cron or row["cron"]
        timezone = body.timezone or row["timezone"]
        paused = row["paused"] if body.paused is None else body.paused
        due = row["next_due_at"]
        if body.cron or body.timezone or (row["paused"] and not paused):
            due = next_due(cron, timezone, now)
        updated = conn.execute(
            "update schedules set input = %s, cron = %s, timezone = %s, paused = %s, "
            "next_due_at = %s, updated_at = now() where id = %s returning *",
            (Jsonb(inputs), cron, timezone, paused, due, schedule_id),
        ).fetchone()
    assert updated is not None
    return ScheduleView.from_row(updated)


def delete_schedule(db: Database, user_id: UUID, schedule_id: UUID) -> None:
    """Delete one of user_id's schedules (its runs stay)."""
    with db.transaction() as conn:
        deleted = conn.execute(
            "delete from schedules where id = %s and user_id = %s returning id",
            (schedule_id, user_id),
        ).fetchone()
    if deleted is None:
        raise ScheduleNotFound(f"schedule {schedule_id} does not exist")


class SchedulesOverview(BaseModel):
    """For operators (`conveyor maintenance list`, the dashboard): how many schedules are active
    and paused, and the next ones due, across users."""

    active: int
    paused: int
    next: list[dict[str, Any]]


def overview(db: Database, *, limit: int = 10) -> SchedulesOverview:
    """Counts and the next `limit` due active schedules (service role: every user's)."""
    with db.transaction() as conn:
        counts = conn.execute(
            "select count(*) filter (where not paused) as active, "
            "count(*) filter (where paused) as paused from schedules"
        ).fetchone()
        upcoming = conn.execute(
            "select id, user_id, workflow_id, cron, timezone, next_due_at, last_error_code "
            "from schedules where not paused order by next_due_at limit %s",
            (limit,),
        ).fetchall()
    assert counts is not None
    return SchedulesOverview(
        active=counts["active"], paused=counts["paused"], next=[dict(row) for row in upcoming]
    )


OWN_SQL = "select * from schedules where id = %s and user_id = %s"


def _own(
    conn: Connection, user_id: UUID, schedule_id: UUID, *, lock: bool = False
) -> dict[str, Any]:
    query = OWN_SQL + " for update" if lock else OWN_SQL
    row = conn.execute(query, (schedule_id, user_id)).fetchone()
    if row is None:
        raise ScheduleNotFound(f"schedule {schedule_id} does not exist")
    return dict(row)


@dataclass(frozen=True)
class Fired:
    """One due schedule handled: the run it started (to publish), or why it started none."""

    schedule_id: UUID
    period: datetime
    run_id: UUID | None
    event: RunEvent | None
    error_code: str | None = None
    # The runs to send to the workers: the new run, or, when its definition holds it (a
    # concurrency key, priority, singleton or debounce), what the dispatcher picked.
    dispatched: tuple[UUID, ...] = ()
    # Status events of runs its singleton `replace` or debounce key cancelled.
    cancelled: tuple[RunEvent, ...] = ()


def fire_due(
    db: Database, now: datetime, *, limit: int = 200, window: int = DISPATCH_WINDOW
) -> list[Fired]:
    """Start a run for each active schedule due by now, each in its own transaction. Only the
    latest due period is fired (periods missed while nothing fired are skipped, as the beat's own
    jobs catch up), once: the row is locked and the run's key names the period."""
    with db.transaction() as conn:
        due = conn.execute(
            "select id from schedules where not paused and next_due_at <= %s "
            "order by next_due_at limit %s",
            (now, limit),
        ).fetchall()
    fired: list[Fired] = []
    for candidate in due:
        try:
            with db.transaction() as conn:
                done = _fire_one(conn, candidate["id"], now, window)
        except ServiceUnavailable:
            raise  # Postgres is down: the next tick tries every schedule again
        except Exception:
            # One schedule that cannot fire (a bug) must not hold back the others.
            log.exception("schedule_fire_failed", schedule_id=str(candidate["id"]))
            continue
        if done is not None:
            fired.append(done)
    return fired


def _fire_one(conn: Connection, schedule_id: UUID, now: datetime, window: int) -> Fired | None:
    row = conn.execute(
        "select * from schedules where id = %s and not paused and next_due_at <= %s "
        "for update skip locked",
        (schedule_id, now),
    ).fetchone()
    if row is None:
        return None  # another beat process has it, or it changed meanwhile
    # The latest due period is the one fired (found backwards: no walk over a long downtime).
    period = max(row["next_due_at"], latest_due(row["cron"], row["timezone"], now))
    following = next_due(row["cron"], row["timezone"], now)
    run_id: UUID | None = None
    event: RunEvent | None = None
    error: ConveyorError | None = None
    cancelled: list[RunEvent] = []
    dispatched: list[UUID] = []
    metadata = {"schedule_id": str(schedule_id), "period": period.isoformat()}
    try:
        with conn.transaction():  # a savepoint: a refused admission fires nothing
            definition = workflows.get_workflow(row["workflow_id"])
            definition.validate_input(row["input"])
            # The definition's flow control holds a scheduled run as it holds a submitted one.
            hold = hold_for(
                definition.concurrency,
                definition.priority,
                {"inputs": row["input"], "user_id": str(row["user_id"]),
                 "metadata": metadata, "session_id": None},
                definition.singleton,
                definition.debounce,
            )  # fmt: skip

            def settle(conn: Connection, run_id: UUID) -> None:
                cancelled.extend(settle_key(conn, run_id, hold))
                dispatched.extend(dispatch_in(conn, window))

            new = insert_run(
                conn,
                user_id=row["user_id"],
                kind="workflow",
                workflow_id=definition.name,
                input=row["input"],
                metadata=metadata,
                steps=definition.step_rows(),
                idempotency_key=f"schedule:{schedule_id}:{period.isoformat()}",
                admit=True,
                hold=hold,
                prepare=settle if hold is not None else None,
            )
            run_id, event = new.id, new.event
            if hold is None and new.created:
                dispatched.append(new.id)
    except ServiceUnavailable:
        raise
    except ConveyorError as exc:
        error = exc
    conn.execute(
        "update schedules set next_due_at = %s, last_fired_at = %s, "
        "last_run_id = coalesce(%s, last_run_id), last_error = %s, last_error_code = %s, "
        "updated_at = now() where id = %s",
        (following, period, run_id, error.message if error else None,
         error.code if error else None, schedule_id),
    )  # fmt: skip
    return Fired(
        schedule_id,
        period,
        run_id,
        event,
        error.code if error else None,
        tuple(dispatched),
        tuple(cancelled),
    )
