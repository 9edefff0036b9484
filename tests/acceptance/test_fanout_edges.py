"""The edges of fan-out, driven in this process (the coordinator's execute_run and each lane's
execute_lane by hand, against the real Postgres and Redis): a run ending with a wait, a map ready
beside branches, a cancel before any lane ran, a drain whose step will not stop, and a collecting
map that outlives the run."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis

import tests.fanout_workflows_for_tests  # registers the workflows used here
import tests.workflows_for_tests  # noqa: F401 - registers tests.sleep_stubbornly
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs import shutdown, store
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.fanout import Lane
from conveyor.runs.lanes import LaneResult, execute_lane
from conveyor.runs.waits import wake_due_runs
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import db_now
from tests.support import new_run


def counted_inputs(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Inputs for the counted workflows: this test's Redis database and a fresh key prefix."""
    return {"redis": str(settings.redis_url), "key": f"t:{uuid.uuid4()}", **extra}


def drive(db: Database, publisher: EventPublisher, settings: Settings, run_id: uuid.UUID) -> Result:
    """The run's coordinator and its lanes, one after another, until it ends or waits."""
    for _ in range(10):
        lanes: list[Lane] = []
        result = execute_run(db, publisher, settings, run_id, start_lanes=lanes.extend)
        if result is not Result.FANNED_OUT:
            return result
        for lane in lanes:
            execute_lane(db, publisher, settings, lane.run_id, lane.attempt, lane.position)
    raise AssertionError("the run did not end in 10 rounds")


def run_row(db: Database, run_id: uuid.UUID) -> dict[str, Any]:
    with db.transaction() as conn:
        row = conn.execute("select * from workflow_runs where id = %s", (run_id,)).fetchone()
    assert row is not None
    return dict(row)


def steps_of(db: Database, run_id: uuid.UUID) -> list[tuple[str, str, int]]:
    with db.transaction() as conn:
        rows = conn.execute(
            "select name, status, attempt from workflow_steps where run_id = %s order by position",
            (run_id,),
        ).fetchall()
    return [(row["name"], row["status"], row["attempt"]) for row in rows]


def item_statuses(db: Database, run_id: uuid.UUID) -> list[str]:
    with db.transaction() as conn:
        rows = conn.execute(
            "select status from run_work_items where run_id = %s order by position, item",
            (run_id,),
        ).fetchall()
    return [row["status"] for row in rows]


def test_a_run_whose_last_step_is_a_wait_completes_when_it_resumes(
    db: Database, publisher: EventPublisher, settings: Settings
) -> None:
    run = new_run(db, "sleep_at_the_end", counted_inputs(settings))
    assert drive(db, publisher, settings, run.id) is Result.WAITING

    assert len(wake_due_runs(db, now=db_now(db) + timedelta(minutes=2))) == 1
    result = drive(db, publisher, settings, run.id)

    assert result is Result.COMPLETED
    assert run_row(db, run.id)["output"]["resumed_at"]


def test_a_branch_declared_after_a_map_is_not_started_again_by_the_maps_checkpoint(
    db: Database, publisher: EventPublisher, settings: Settings, clean_redis: redis.Redis
) -> None:
    inputs = counted_inputs(settings)
    run = new_run(db, "map_beside_branches", inputs)

    result = drive(db, publisher, settings, run.id)

    assert result is Result.COMPLETED
    ran = [int(clean_redis.get(f"{inputs['key']}:ran:{name}") or 0) for name in ("x", "y")]
    assert ran == [1, 1]
    assert steps_of(db, run.id) == [
        ("start", "completed", 1),
        ("x", "completed", 1),
        ("each", "completed", 1),
        ("y", "completed", 1),
        ("end", "completed", 1),
    ]


def test_a_cancel_before_any_lane_ran_ends_the_run_and_its_items_at_once(
    db: Database, publisher: EventPublisher, settings: Settings
) -> None:
    user_id = uuid.uuid4()
    run = new_run(db, "map_collect", counted_inputs(settings, count=6), user_id=user_id)
    lanes: list[Lane] = []
    assert execute_run(db, publisher, settings, run.id, start_lanes=lanes.extend) is (
        Result.FANNED_OUT
    )
    store.cancel_run(db, {"sub": str(user_id), "role": "authenticated"}, run.id)

    results = [
        execute_lane(db, publisher, settings, lane.run_id, lane.attempt, lane.position)
        for lane in lanes
    ]

    assert results[0] is LaneResult.CANCELLED
    assert run_row(db, run.id)["status"] == "cancelled"
    assert item_statuses(db, run.id) == ["cancelled"] * 6


def test_a_drained_lane_whose_step_will_not_stop_keeps_its_item_until_the_lease_ends(
    db: Database,
    publisher: EventPublisher,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = new_run(db, "map_of_a_stubborn_step", counted_inputs(settings, nap=4))
    lanes: list[Lane] = []
    execute_run(db, publisher, settings, run.id, start_lanes=lanes.extend)
    drain = shutdown.Drain()
    monkeypatch.setattr(shutdown, "DRAIN", drain)
    draining = settings.model_copy(update={"worker_drain_seconds": 0})
    threading.Timer(0.5, drain.request).start()

    lane = lanes[0]
    result = execute_lane(db, publisher, draining, lane.run_id, lane.attempt, lane.position)

    assert result is LaneResult.LEFT_TO_LEASE
    assert item_statuses(db, run.id) == ["running"]
    monkeypatch.setattr(shutdown, "DRAIN", shutdown.Drain())
    again = execute_lane(db, publisher, settings, lane.run_id, lane.attempt, lane.position)
    assert again is LaneResult.DONE  # nothing to take while the item's lease runs


def test_a_collecting_map_that_outlives_the_run_fails_it_with_run_timeout(
    db: Database, publisher: EventPublisher, settings: Settings, clean_redis: redis.Redis
) -> None:
    inputs = counted_inputs(settings, nap=1)
    run = new_run(db, "map_outlives_the_run", inputs)

    result = drive(db, publisher, settings, run.id)

    assert result is Result.FAILED
    assert run_row(db, run.id)["error_code"] == "RUN_TIMEOUT"
    ran = sum(int(clean_redis.get(f"{inputs['key']}:ran:{i}") or 0) for i in range(4))
    assert ran < 4  # the items left when the time ran out never started
