"""`map`: one sub-step per item of a list known only at run time, at most `concurrency` at once,
outputs in input order, failing fast or collecting failures, each item checkpointed on its own
(kill -9 during a map: test_fanout_crash.py)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tests.fanout_workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.runs.fanout import MAP_STARTED
from conveyor.runs.work_items import MAP_PROGRESS
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import events_of, submit
from tests.fake_llm import FakeLlm
from tests.support import (
    ApiClient,
    celery_process,
    wait_for_run,
    wait_until,
    worker_args,
    worker_env,
)

USES_FAKE_LLM = True


@pytest.fixture
def six_processes(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """One worker with six pool processes: room for more lanes than a map allows."""
    process = celery_process(*worker_args("runs", concurrency=6), env=worker_env(settings))
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def counted_inputs(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Inputs for the counted workflows: this test's Redis database and a fresh key prefix."""
    return {"redis": str(settings.redis_url), "key": f"t:{uuid.uuid4()}", **extra}


def map_output(view: dict[str, Any]) -> dict[str, Any]:
    """The map step's output, as the step after it saw it."""
    return dict(view["output"]["each"])


def test_items_run_at_most_concurrency_at_once_and_outputs_keep_input_order(
    six_processes: subprocess.Popen[bytes],
    client: ApiClient,
    settings: Settings,
    clean_redis: redis.Redis,
) -> None:
    inputs = counted_inputs(settings, count=12, nap=0.3)
    run_id = submit(client, "map_fail_fast", inputs)

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    output = map_output(view)
    assert [item["name"] for item in output["items"]] == [str(i) for i in range(12)]
    assert output["failed"] == []
    assert 2 <= int(clean_redis.get(f"{inputs['key']}:peak") or 0) <= 3
    assert len({item["pid"] for item in output["items"]}) >= 2


def test_each_item_runs_once_and_the_map_is_announced_with_its_progress(
    worker: Any, client: ApiClient, settings: Settings, clean_redis: redis.Redis
) -> None:
    inputs = counted_inputs(settings, count=7)
    run_id = submit(client, "map_fail_fast", inputs)

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    ran = [int(clean_redis.get(f"{inputs['key']}:ran:{i}") or 0) for i in range(7)]
    assert ran == [1] * 7
    events = events_of(client, run_id)
    started = [e["data"] for e in events if e["event"] == MAP_STARTED]
    assert started == [
        {"step": "each", "position": 1, "items": 7, "concurrency": 3, "on_failure": "fail_fast"}
    ]
    last = [e["data"] for e in events if e["event"] == MAP_PROGRESS][-1]
    assert last == {"position": 1, "completed": 7, "failed": 0, "total": 7}


def test_a_failing_item_fails_the_map_fast_and_items_not_started_never_run(
    worker: Any, client: ApiClient, settings: Settings, clean_redis: redis.Redis
) -> None:
    inputs = counted_inputs(settings, count=12, nap=0.2, fail_at=[1])
    run_id = submit(client, "map_fail_fast", inputs)

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "failed"
    assert view["error_code"] == "BY_DESIGN"
    assert "item 1 failed" in view["error"]
    ran = [int(clean_redis.get(f"{inputs['key']}:ran:{i}") or 0) for i in range(12)]
    assert ran[1] == 1
    assert sum(ran) < 12
    statuses = {step["name"]: step["status"] for step in view["steps"]}
    assert statuses == {"list": "completed", "each": "failed", "after": "skipped"}


def test_collected_failures_are_listed_and_the_run_goes_on(
    worker: Any, client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "map_collect", counted_inputs(settings, count=6, fail_at=[1, 4]))

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    output = map_output(view)
    assert [item and item["name"] for item in output["items"]] == ["0", None, "2", "3", None, "5"]
    assert [(f["index"], f["error_code"]) for f in output["failed"]] == [
        (1, "BY_DESIGN"),
        (4, "BY_DESIGN"),
    ]


def test_a_map_over_an_empty_list_completes_with_no_items(
    worker: Any, client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "map_fail_fast", counted_inputs(settings, count=0))

    view = wait_for_run(client, run_id, timeout=30)

    assert view["status"] == "completed", view
    assert map_output(view) == {"items": [], "failed": []}


def test_a_list_over_ten_thousand_items_fails_the_step_saying_so(
    worker: Any, client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "map_fail_fast", counted_inputs(settings, count=10_001))

    view = wait_for_run(client, run_id, timeout=30)

    assert view["status"] == "failed"
    assert view["error_code"] == "MAP_TOO_LARGE"
    assert "10001 items" in view["error"]


def test_each_items_model_call_is_charged_once(
    worker: Any, client: ApiClient, settings: Settings, fake_llm: FakeLlm, db: Database
) -> None:
    run_id = submit(client, "map_of_model_calls", counted_inputs(settings, count=5))

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    assert fake_llm.completed == {f"item {i}": 1 for i in range(5)}
    with db.transaction() as conn:
        rows = conn.execute(
            "select step_position, idempotency_key from usage_events where run_id = %s",
            (run_id,),
        ).fetchall()
    assert len(rows) == 5
    assert {row["step_position"] for row in rows} == {1}
    assert sorted(row["idempotency_key"].split(":")[5] for row in rows) == [
        str(i) for i in range(5)
    ]


def test_a_runs_items_are_listed_in_order_a_page_at_a_time_with_counts_per_step(
    worker: Any, client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "map_collect", counted_inputs(settings, count=5, fail_at=[3]))
    wait_for_run(client, run_id, timeout=60)

    first = client.get(f"/api/runs/{run_id}/items", params={"limit": 2}).json()
    rest = client.get(
        f"/api/runs/{run_id}/items", params={"after": first["next_after"], "limit": 10}
    ).json()
    failed = client.get(f"/api/runs/{run_id}/items", params={"status": "failed"}).json()

    assert [item["index"] for item in first["items"] + rest["items"]] == [0, 1, 2, 3, 4]
    assert first["next_after"] == "1.1"
    assert rest["next_after"] is None
    assert first["steps"] == [
        {
            "step": "each",
            "kind": "map",
            "total": 5,
            "pending": 0,
            "running": 0,
            "waiting": 0,
            "completed": 4,
            "failed": 1,
            "cancelled": 0,
        }
    ]
    assert [(i["index"], i["input"], i["error_code"]) for i in failed["items"]] == [
        (3, 3, "BY_DESIGN")
    ]


def test_someone_elses_runs_items_are_not_found(
    worker: Any, client: ApiClient, make_client: Any, settings: Settings
) -> None:
    run_id = submit(client, "map_collect", counted_inputs(settings, count=1))

    response = make_client(uuid.uuid4()).get(f"/api/runs/{run_id}/items")

    assert response.status_code == 404
    assert response.json()["code"] == "RUN_NOT_FOUND"


def test_items_of_an_unknown_step_are_a_clear_400(
    worker: Any, client: ApiClient, settings: Settings
) -> None:
    run_id = submit(client, "map_collect", counted_inputs(settings, count=1))
    wait_for_run(client, run_id, timeout=30)

    response = client.get(f"/api/runs/{run_id}/items", params={"step": "nope"})

    assert response.status_code == 400
    assert "each" in response.json()["error"]


def test_cancelling_a_mapping_run_stops_its_lanes_and_runs_no_item_not_yet_started(
    six_processes: subprocess.Popen[bytes],
    client: ApiClient,
    settings: Settings,
    clean_redis: redis.Redis,
) -> None:
    inputs = counted_inputs(settings, count=30, nap=2)
    run_id = submit(client, "map_wide", inputs)
    wait_until(lambda: int(clean_redis.get(f"{inputs['key']}:active") or 0) >= 2, 30, "lanes")

    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 200
    view = wait_for_run(client, run_id, timeout=30)

    assert view["status"] == "cancelled"
    ran = sum(int(clean_redis.get(f"{inputs['key']}:ran:{i}") or 0) for i in range(30))
    assert ran <= 8
    items = client.get(f"/api/runs/{run_id}/items", params={"limit": 100}).json()
    assert {item["status"] for item in items["items"]} == {"cancelled"}
    assert {step["name"]: step["status"] for step in view["steps"]}["each"] == "cancelled"
