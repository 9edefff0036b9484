"""A user forgotten while a real worker runs one of their runs: the worker stops at its next
check-in as lease lost, writes nothing more, and nothing of the run or the user remains."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from celery.signals import task_postrun

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.ops.erasure import forget_user
from conveyor.runs.execution import Result
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, wait_for_run, wait_until
from tests.user_rows import rows_of

pytestmark = pytest.mark.usefixtures("worker")
USES_FAKE_LLM = True
SETTINGS = {"cancel_check_seconds": 0.05}


@pytest.fixture
def run_results() -> Iterator[list[Any]]:
    """What each run task executed in this process returned."""
    results: list[Any] = []

    def collect(task: Any = None, retval: Any = None, **_: Any) -> None:
        if task is not None and task.name == TASK_EXECUTE_RUN:
            results.append(retval)

    task_postrun.connect(collect, weak=False)
    yield results
    task_postrun.disconnect(collect)


def test_a_running_run_of_a_forgotten_user_stops_as_lease_lost_and_leaves_nothing(
    client: ApiClient,
    user_id: uuid.UUID,
    db: Database,
    database_url: str,
    fake_llm: FakeLlm,
    run_results: list[Any],
) -> None:
    body = {"workflow_id": "wait_then_call", "inputs": {"seconds": 30}, "async": True}
    run_id = client.post("/api/agents/workflows/execute", json=body).json()["workflow_run_id"]
    wait_for_run(client, run_id, until=frozenset({"running"}))

    forget_user(db, user_id)

    wait_until(lambda: run_results, timeout=10, what="the worker ending the run's attempt")
    assert run_results == [Result.LEASE_LOST.value]
    assert fake_llm.received["after the wait"] == 0
    with psycopg.connect(database_url) as conn:
        assert set(rows_of(conn, user_id).values()) == {0}
        assert conn.execute(
            "select (select count(*) from conveyor.workflow_steps where run_id = %(run)s) "
            "+ (select count(*) from conveyor.run_events where run_id = %(run)s)",
            {"run": run_id},
        ).fetchone() == (0,)


def test_a_synchronous_execute_whose_user_is_forgotten_while_it_waits_answers_404(
    client: ApiClient, user_id: uuid.UUID, db: Database
) -> None:
    body = {"workflow_id": "wait_then_call", "inputs": {"seconds": 30}, "async": False}
    answers: list[Any] = []
    waiting = threading.Thread(
        target=lambda: answers.append(client.post("/api/agents/workflows/execute", json=body))
    )
    waiting.start()
    wait_until(
        lambda: rows_of_runs(db, user_id) > 0, timeout=10, what="the synchronous run existing"
    )

    forget_user(db, user_id)
    waiting.join(timeout=20)

    [response] = answers
    assert response.status_code == 404
    assert response.json()["code"] == "RUN_NOT_FOUND"


def rows_of_runs(db: Database, user_id: uuid.UUID) -> int:
    with db.connection() as conn:
        row = conn.execute(
            "select count(*) as n from workflow_runs where user_id = %s", (user_id,)
        ).fetchone()
    assert row is not None
    return int(row["n"])
