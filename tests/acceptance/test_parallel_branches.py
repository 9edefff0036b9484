"""Parallel branches: steps whose dependencies are met run at the same time on different workers,
and the step after them runs once, when the last of them completes."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import tests.fanout_workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs import work_items
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.fanout import BRANCHES_STARTED
from conveyor.runs.work_items import ItemEnd
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import events_of, submit
from tests.support import ApiClient, new_run, wait_for_run, worker_subprocess


@pytest.fixture
def two_workers(settings: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two worker processes on the runs queue, one task at a time each."""
    with (
        worker_subprocess(settings, "runs") as first,
        worker_subprocess(settings, "runs") as second,
    ):
        yield [first, second]


BRANCH_STEPS = ("left", "right", "joined")


def counted_inputs(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Inputs for the counted workflows: this test's Redis database and a fresh key prefix."""
    return {"redis": str(settings.redis_url), "key": f"t:{uuid.uuid4()}", **extra}


def test_ready_branches_run_at_the_same_time_on_different_workers(
    two_workers: list[subprocess.Popen[bytes]], client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "two_branches", counted_inputs(settings, nap=1.5))

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    left, right = (step["output"] for step in view["steps"] if step["name"] in ("left", "right"))
    assert left["pid"] != right["pid"]
    assert left["started"] < right["ended"]
    assert right["started"] < left["ended"]


def test_the_step_after_the_branches_runs_once_after_both(
    two_workers: list[subprocess.Popen[bytes]],
    make_client: Callable[..., ApiClient],
    settings: Settings,
    clean_redis: redis.Redis,
) -> None:
    inputs = counted_inputs(settings, nap=0)
    # Ten users (each plan admits a few runs at once), all branches racing on two workers.
    clients = [make_client(uuid.uuid4()) for _ in range(10)]
    run_ids = [submit(client, "two_branches", inputs) for client in clients]

    views = [
        wait_for_run(client, run_id, timeout=60)
        for client, run_id in zip(clients, run_ids, strict=True)
    ]

    assert [view["status"] for view in views] == ["completed"] * 10
    key = inputs["key"]
    assert [int(clean_redis.get(f"{key}:ran:{name}") or 0) for name in ("left", "right")] == [
        10,
        10,
    ]
    assert int(clean_redis.get(f"{key}:ran:joined") or 0) == 10
    for client, run_id, view in zip(clients, run_ids, views, strict=True):
        steps = {step["name"]: step for step in view["steps"]}
        joined, left, right = (steps[name]["output"] for name in ("joined", "left", "right"))
        assert joined["started"] >= max(left["ended"], right["ended"])
        assert [s["attempt"] for s in view["steps"]] == [1, 1, 1, 1]
        events = [e["event"] for e in events_of(client, run_id)]
        assert events.count(BRANCHES_STARTED) == 1
        assert events.count("step_completed") == 4


def test_a_failing_branch_fails_the_run_at_that_step_and_what_needs_it_never_runs(
    two_workers: list[subprocess.Popen[bytes]], client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "two_branches", counted_inputs(settings, fail_at=["right"]))

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "failed"
    assert view["error_code"] == "BY_DESIGN"
    assert "'right'" in view["error"]
    statuses = {step["name"]: step["status"] for step in view["steps"]}
    # `left` completed, or was never taken once `right` failed (fail fast): either way not run
    # twice, and `joined` never ran.
    assert statuses["right"] == "failed"
    assert statuses["joined"] == "skipped"
    assert statuses["left"] in ("completed", "skipped")


def test_two_branches_ending_at_the_same_instant_queue_the_run_once(
    db: Database, settings: Settings, publisher: EventPublisher
) -> None:
    """Both lanes record their branch's end at once, on two connections: the run row's lock
    orders them, so exactly one sees no open item left and queues the run."""
    run = new_run(db, "two_branches", counted_inputs(settings))
    assert execute_run(db, publisher, settings, run.id) is Result.FANNED_OUT
    claim = work_items.load_claim(db, run.id, 1)
    assert claim is not None
    taken = [
        work_items.take(db, claim, position, branch=True, lease_seconds=60) for position in (1, 2)
    ]
    barrier = threading.Barrier(2)
    results: list[work_items.Recorded] = []

    def finish(index: int) -> None:
        item = taken[index]
        assert item is not None
        barrier.wait()
        results.append(
            work_items.record_end(
                db,
                claim,
                item,
                ItemEnd(output={"branch": index}),
                fail_fast=True,
                progress=False,
                lease_seconds=60,
            )
        )

    threads = [threading.Thread(target=finish, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(result.resume for result in results) == [False, True]
    with db.transaction() as conn:
        row = conn.execute("select status from workflow_runs where id = %s", (run.id,)).fetchone()
    assert row is not None
    assert row["status"] == "queued"
