"""API schedules fire once per period on an injected clock: across both DST changes in
America/New_York, twice at the same instant, after downtime, and not while paused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import tests.workflows_for_tests  # noqa: F401 - registers write_brief
from conveyor import workflows
from conveyor.db import Database
from conveyor.ops import user_schedules
from conveyor.ops.user_schedules import ScheduleCreate, ScheduleUpdate
from conveyor.workflows.definitions import ConcurrencySpec


def at(text: str) -> datetime:
    """A UTC instant from its ISO form (no offset: UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule(
    db: Database, cron: str, timezone: str, now: datetime, user_id: uuid.UUID | None = None
) -> user_schedules.ScheduleView:
    body = ScheduleCreate(
        workflow_id="write_brief", inputs={"topic": "ticks"}, cron=cron, timezone=timezone
    )
    return user_schedules.create_schedule(db, user_id or uuid.uuid4(), body, now)


def runs_of(db: Database, schedule_id: uuid.UUID) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return conn.execute(
            "select id, metadata ->> 'period' as period from workflow_runs "
            "where metadata ->> 'schedule_id' = %s order by created_at",
            (str(schedule_id),),
        ).fetchall()


def test_a_daily_time_skipped_by_spring_forward_fires_once_at_the_jump(db: Database) -> None:
    made = schedule(db, "30 2 * * *", "America/New_York", at("2027-03-13T17:00:00"))

    before = user_schedules.fire_due(db, at("2027-03-14T06:59:00"))  # 01:59 EST
    jump = user_schedules.fire_due(db, at("2027-03-14T07:00:30"))  # 03:00:30 EDT
    after = user_schedules.fire_due(db, at("2027-03-14T07:45:00"))

    assert before == []
    assert [fired.period for fired in jump] == [at("2027-03-14T07:00:00")]
    assert after == []
    assert len(runs_of(db, made.id)) == 1
    assert user_schedules.get_schedule(db, _owner(db, made.id), made.id).next_due_at == at(
        "2027-03-15T06:30:00"
    )


def test_a_daily_time_repeated_by_fall_back_fires_once(db: Database) -> None:
    made = schedule(db, "30 1 * * *", "America/New_York", at("2026-10-31T17:00:00"))

    first = user_schedules.fire_due(db, at("2026-11-01T05:31:00"))  # 01:31 EDT
    repeated = user_schedules.fire_due(db, at("2026-11-01T06:31:00"))  # 01:31 EST

    assert [fired.period for fired in first] == [at("2026-11-01T05:30:00")]
    assert repeated == []
    assert len(runs_of(db, made.id)) == 1


def test_firing_twice_at_the_same_instant_starts_one_run(db: Database) -> None:
    made = schedule(db, "*/5 * * * *", "UTC", at("2026-12-07T10:01:00"))

    first = user_schedules.fire_due(db, at("2026-12-07T10:05:10"))
    second = user_schedules.fire_due(db, at("2026-12-07T10:05:10"))

    assert len(first) == 1
    assert first[0].run_id is not None
    assert second == []
    assert [run["id"] for run in runs_of(db, made.id)] == [first[0].run_id]


def test_after_downtime_only_the_latest_due_period_fires(db: Database) -> None:
    made = schedule(db, "0 * * * *", "Europe/Berlin", at("2026-12-07T10:30:00"))

    fired = user_schedules.fire_due(db, at("2026-12-08T13:20:00"))

    assert [one.period for one in fired] == [at("2026-12-08T13:00:00")]
    assert len(runs_of(db, made.id)) == 1


def test_a_year_of_missed_minutes_fires_only_the_latest(db: Database) -> None:
    made = schedule(db, "* * * * *", "UTC", at("2025-12-07T10:00:00"))

    fired = user_schedules.fire_due(db, at("2026-12-07T10:00:30"))

    assert [one.period for one in fired] == [at("2026-12-07T10:00:00")]
    assert len(runs_of(db, made.id)) == 1


def test_a_paused_schedule_does_not_fire_and_resumes_from_the_time_it_resumes(
    db: Database,
) -> None:
    user_id = uuid.uuid4()
    made = schedule(db, "0 9 * * *", "UTC", at("2026-12-07T08:00:00"), user_id)
    user_schedules.update_schedule(
        db, user_id, made.id, ScheduleUpdate(paused=True), at("2026-12-07T08:10:00")
    )

    paused = user_schedules.fire_due(db, at("2026-12-09T09:30:00"))
    resumed = user_schedules.update_schedule(
        db, user_id, made.id, ScheduleUpdate(paused=False), at("2026-12-09T09:40:00")
    )

    assert paused == []
    assert runs_of(db, made.id) == []
    assert resumed.next_due_at == at("2026-12-10T09:00:00")


def _owner(db: Database, schedule_id: uuid.UUID) -> uuid.UUID:
    with db.transaction() as conn:
        row = conn.execute("select user_id from schedules where id = %s", (schedule_id,)).fetchone()
    assert row is not None
    return row["user_id"]


def test_the_next_due_time_is_after_the_instant_given() -> None:
    due = user_schedules.next_due("0 0 1 * *", "Asia/Tokyo", at("2026-12-07T00:00:00"))

    assert due == at("2026-12-31T15:00:00")
    assert due - at("2026-12-07T00:00:00") < timedelta(days=31)


# write_brief with one run per user at a time: its schedules' runs are held as submits are.
ONE_PER_USER = "write_brief_one_per_user"
workflows.define(
    workflows.get("write_brief").model_copy(
        update={"name": ONE_PER_USER, "concurrency": ConcurrencySpec(key="{{ user_id }}", limit=1)}
    )
)


def test_a_scheduled_run_of_a_keyed_workflow_is_held_by_its_key(db: Database) -> None:
    user, now = uuid.uuid4(), at("2026-12-07T10:01:00")
    body = ScheduleCreate(
        workflow_id=ONE_PER_USER, inputs={"topic": "ticks"}, cron="*/5 * * * *", timezone="UTC"
    )
    made = [user_schedules.create_schedule(db, user, body, now) for _ in range(2)]

    fired = user_schedules.fire_due(db, at("2026-12-07T10:05:10"))

    assert sorted(one.schedule_id for one in fired) == sorted(one.id for one in made)
    assert sorted(len(one.dispatched) for one in fired) == [0, 1]
    with db.transaction() as conn:
        held = conn.execute(
            "select count(*) as n from workflow_runs where user_id = %s and concurrency_key = %s "
            "and status = 'queued' and dispatched_at is null",
            (user, str(user)),
        ).fetchone()
    assert held is not None
    assert held["n"] == 1
