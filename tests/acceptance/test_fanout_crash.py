"""A worker killed with kill -9 during a fan-out or a map: the run's lease runs out, the reaper
hands it to a coordinator on another worker, which dispatches only the unfinished branches or
items again; nothing completed runs twice and every charge is applied once."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

import tests.fanout_workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import submit
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, finish_with_reaper, wait_until, worker_subprocess

LEASE_SECONDS = 5
USES_FAKE_LLM = True
# Short leases so a dead worker's run is taken over within seconds.
SETTINGS = {"run_lease_seconds": LEASE_SECONDS, "cancel_check_seconds": 0.1}


@pytest.fixture
def doomed_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """The worker the test kills."""
    with worker_subprocess(settings, "runs") as process:
        yield process


def kill(process: subprocess.Popen[bytes]) -> None:
    """kill -9, as an out-of-memory killer or a lost host would."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def test_a_map_survives_a_killed_worker_and_completed_items_do_not_run_again(
    request: pytest.FixtureRequest,
    doomed_worker: subprocess.Popen[bytes],
    client: ApiClient,
    settings: Settings,
    clean_redis: redis.Redis,
    celery_app: Celery,
) -> None:
    key = f"t:{uuid.uuid4()}"
    inputs = {"redis": str(settings.redis_url), "key": key, "count": 10, "nap": 0.4}
    run_id = submit(client, "map_fail_fast", inputs)
    done = lambda: sum(int(clean_redis.get(f"{key}:done:{i}") or 0) for i in range(10))  # noqa: E731
    wait_until(lambda: done() >= 3, 30, "three items done on the first worker")

    kill(doomed_worker)
    # Checkpointed before the kill (an item whose function ended but whose end was not yet
    # committed is in flight: it may run again).
    items = client.get(f"/api/runs/{run_id}/items", params={"status": "completed"}).json()
    finished_before = {item["index"] for item in items["items"]}
    assert finished_before
    request.getfixturevalue("worker")  # a second worker, on every queue
    view = finish_with_reaper(client, celery_app, run_id, LEASE_SECONDS + 30)

    assert view["status"] == "completed", view
    items = view["output"]["each"]["items"]
    assert [item["name"] for item in items] == [str(i) for i in range(10)]
    ran = [int(clean_redis.get(f"{key}:ran:{i}") or 0) for i in range(10)]
    assert all(ran[i] == 1 for i in finished_before)
    finished = [int(clean_redis.get(f"{key}:done:{i}") or 0) for i in range(10)]
    assert all(count >= 1 for count in finished)
    assert sum(ran) <= 11  # at most the item in flight at the kill ran again


def test_branches_survive_a_killed_worker_and_the_model_call_is_charged_once(
    request: pytest.FixtureRequest,
    doomed_worker: subprocess.Popen[bytes],
    client: ApiClient,
    fake_llm: FakeLlm,
    celery_app: Celery,
    db: Database,
) -> None:
    run_id = submit(client, "model_call_beside_a_held_call", {"server": fake_llm.url, "key": "b1"})
    assert fake_llm.holding.wait(60), "the first worker never reached the held branch"

    kill(doomed_worker)
    wait_until(lambda: fake_llm.abandoned["b1"] == 1, 10, "the held request being dropped")
    request.getfixturevalue("worker")
    view = finish_with_reaper(client, celery_app, run_id, LEASE_SECONDS + 30)

    assert view["status"] == "completed", view
    assert view["output"] == "reply to: branch b1"
    assert fake_llm.completed == {"branch b1": 1, "b1": 1}
    with db.transaction() as conn:
        charges = conn.execute(
            "select count(*) as n from usage_events where run_id = %s", (run_id,)
        ).fetchone()
    assert charges is not None
    assert charges["n"] == 1
