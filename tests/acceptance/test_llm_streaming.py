"""Token streaming: an `llm` step with `stream: true` sends its text as stored `step_tokens` run
events on /api/ws/workflows, its output is the streamed text, its usage comes from the provider's
last chunk and is charged once, and a stream cut off (or a worker killed) mid-way is retried with
its partial text marked void."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
from celery import Celery

import tests.streaming_workflows  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.websocket_clients import Socket
from tests.fake_llm import FakeLlm, StreamScript
from tests.streaming_workflows import MODULES
from tests.support import (
    ApiClient,
    LiveServer,
    finish_with_reaper,
    token_for,
    wait_for_run,
    wait_until,
    worker_subprocess,
)

LEASE_SECONDS = 5
USES_FAKE_LLM = True
# Every chunk is its own event (no coalescing), so the tests can name each one; short leases so a
# killed worker's run is taken over within seconds.
SETTINGS = {
    "llm_stream_flush_seconds": 0.0,
    "run_lease_seconds": LEASE_SECONDS,
    "cancel_check_seconds": 0.1,
}
CHUNKS = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog.")
FINAL = frozenset({"completed", "failed", "cancelled"})


def submit(client: ApiClient, prompt: str) -> str:
    """Start a `stream_reply` run; its id."""
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "stream_reply", "inputs": {"prompt": prompt}, "async": True},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def subscribe(sock: Socket, run_id: str, since: int) -> None:
    sock.send(type="subscribe", topic=f"workflow_run:{run_id}", since=since)
    assert sock.recv()["type"] == "subscribed"


def until_final(sock: Socket, limit: int = 200) -> list[dict[str, Any]]:
    """Events from the socket up to the run's final status (at most limit)."""
    received: list[dict[str, Any]] = []
    for _ in range(limit):
        event = sock.recv()
        received.append(event)
        if event["event"] == "workflow_status_update" and event["data"]["status"] in FINAL:
            return received
    raise AssertionError(f"no final status in {limit} events: {received}")


def tokens(events: list[dict[str, Any]], attempt: int | None = None) -> list[str]:
    """The text of the step_tokens events (of one attempt), in order."""
    return [
        e["data"]["text"]
        for e in events
        if e["event"] == "step_tokens" and attempt in (None, e["data"]["attempt"])
    ]


def stream_events(events: list[dict[str, Any]]) -> list[tuple[str, int, int | str]]:
    """(event, attempt, index or discarded chars) of the stream's events, in order."""
    return [
        (e["event"], e["data"]["attempt"], e["data"].get("index", e["data"].get("chars")))
        for e in events
        if e["event"] in ("step_tokens", "step_tokens_discarded")
    ]


def events_of(client: ApiClient, run_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"/api/runs/{run_id}/events", params={"limit": 500}).json()["events"])


def charges(db: Database, run_id: str) -> list[tuple[str, int, int]]:
    """(idempotency key, prompt tokens, completion tokens) of the run's ledger rows."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select idempotency_key, prompt_tokens, completion_tokens from usage_events "
            "where run_id = %s order by id",
            (run_id,),
        ).fetchall()
    return [(r["idempotency_key"], r["prompt_tokens"], r["completion_tokens"]) for r in rows]


@pytest.mark.usefixtures("worker")
def test_tokens_arrive_over_the_websocket_as_step_tokens_in_order(
    connect: Any, client: ApiClient, user_id: uuid.UUID, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS, delay=0.02))
    run_id = submit(client, "fox")
    sock = connect("workflows", user_id)
    subscribe(sock, run_id, since=0)

    received = until_final(sock)

    assert received[-1]["data"]["status"] == "completed"
    assert tokens(received) == list(CHUNKS)
    assert [e["data"]["index"] for e in received if e["event"] == "step_tokens"] == list(
        range(len(CHUNKS))
    )
    assert {
        (e["data"]["step"], e["data"]["attempt"]) for e in received if e["event"] == "step_tokens"
    } == {("reply", 1)}


@pytest.mark.usefixtures("worker")
def test_a_client_reconnecting_with_since_gets_every_token_once(
    connect: Any, client: ApiClient, user_id: uuid.UUID, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS, delay=0.05))
    run_id = submit(client, "fox")
    first = connect("workflows", user_id)
    subscribe(first, run_id, since=0)
    before: list[dict[str, Any]] = []
    while not tokens(before):
        before.append(first.recv())
    first.close()

    second = connect("workflows", user_id)
    subscribe(second, run_id, since=before[-1]["seq"])
    after = until_final(second)

    delivered = [e["seq"] for e in before + after]
    assert delivered == list(range(1, len(delivered) + 1))
    assert "".join(tokens(before + after)) == "".join(CHUNKS)


@pytest.mark.usefixtures("worker")
def test_the_final_output_equals_the_streamed_text(client: ApiClient, fake_llm: FakeLlm) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS))
    run_id = submit(client, "fox")

    view = wait_for_run(client, run_id)

    assert view["status"] == "completed", view
    assert view["output"]["text"] == "".join(CHUNKS)
    assert "".join(tokens(events_of(client, run_id))) == view["output"]["text"]
    assert view["output"]["finish_reason"] == "stop"


@pytest.mark.usefixtures("worker")
def test_streamed_steps_in_parallel_branches_each_stream_their_own_text(
    client: ApiClient, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("pros fox", StreamScript(CHUNKS[:4]))
    fake_llm.stream_script("cons fox", StreamScript(CHUNKS[4:]))
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "stream_branches", "inputs": {"prompt": "fox"}, "async": True},
    )
    run_id = response.json()["workflow_run_id"]

    view = wait_for_run(client, run_id)
    events = [e for e in events_of(client, run_id) if e["event"] == "step_tokens"]

    assert view["status"] == "completed", view
    assert ["".join(e["data"]["text"] for e in events if e["data"]["step"] == step)
            for step in ("pros", "cons")] == ["".join(CHUNKS[:4]), "".join(CHUNKS[4:])]  # fmt: skip
    assert view["output"] == "".join(CHUNKS[:4]) + " | " + "".join(CHUNKS[4:])


@pytest.mark.usefixtures("worker")
def test_usage_from_the_final_chunk_is_charged_once(
    client: ApiClient, db: Database, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("two words", StreamScript(CHUNKS))
    run_id = submit(client, "two words")

    view = wait_for_run(client, run_id)

    assert view["status"] == "completed", view
    # The fake counts the prompt's words as prompt tokens and one token per chunk.
    assert charges(db, run_id) == [(f"run:{run_id}:step:0:attempt:1", 2, len(CHUNKS))]
    assert view["steps"][0]["usage"]["completion_tokens"] == len(CHUNKS)


@pytest.mark.usefixtures("worker")
def test_a_stream_without_a_usage_chunk_completes_and_is_recorded_at_zero_tokens(
    client: ApiClient, db: Database, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS, usage=False))
    run_id = submit(client, "fox")

    view = wait_for_run(client, run_id)

    assert view["status"] == "completed", view
    assert view["output"]["text"] == "".join(CHUNKS)
    assert charges(db, run_id) == [(f"run:{run_id}:step:0:attempt:1", 0, 0)]


@pytest.mark.usefixtures("worker")
def test_a_server_ignoring_stream_gives_its_whole_text_as_one_event(
    client: ApiClient, db: Database, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS, ignore_stream=True))
    run_id = submit(client, "fox")

    view = wait_for_run(client, run_id)

    assert view["status"] == "completed", view
    assert tokens(events_of(client, run_id)) == ["".join(CHUNKS)]
    assert view["output"]["text"] == "".join(CHUNKS)
    assert charges(db, run_id) == [(f"run:{run_id}:step:0:attempt:1", 1, len(CHUNKS))]


@pytest.mark.usefixtures("worker")
def test_a_cut_off_stream_is_retried_its_partial_text_marked_and_charged_once(
    client: ApiClient, db: Database, fake_llm: FakeLlm
) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS, cut_after=3))
    run_id = submit(client, "fox")

    view = wait_for_run(client, run_id)
    events = events_of(client, run_id)

    assert view["status"] == "completed", view
    assert fake_llm.cut == {"fox": 1}
    assert fake_llm.completed == {"fox": 1}
    assert stream_events(events) == [
        ("step_tokens", 1, 0),
        ("step_tokens", 1, 1),
        ("step_tokens", 1, 2),
        ("step_tokens_discarded", 1, len("".join(CHUNKS[:3]))),
        *(("step_tokens", 2, index) for index in range(len(CHUNKS))),
    ]
    assert view["output"]["text"] == "".join(tokens(events, attempt=2)) == "".join(CHUNKS)
    assert charges(db, run_id) == [(f"run:{run_id}:step:0:attempt:2", 1, len(CHUNKS))]


@pytest.mark.usefixtures("worker")
def test_a_cancel_stops_the_stream_between_chunks(client: ApiClient, fake_llm: FakeLlm) -> None:
    """The step stops reading (and closes the connection) rather than read to the end."""
    fake_llm.stream_script("fox", StreamScript(CHUNKS * 20, delay=0.05))
    run_id = submit(client, "fox")
    wait_until(lambda: tokens(events_of(client, run_id)), 10, "a first streamed token")

    cancelled = client.post(f"/api/runs/{run_id}/cancel")
    view = wait_for_run(client, run_id)
    wait_until(lambda: fake_llm.streams_ended["fox"] == 1, 20, "the provider's stream ending")

    assert cancelled.status_code == 200, cancelled.text
    assert view["status"] == "cancelled", view
    assert fake_llm.completed["fox"] == 0
    assert fake_llm.dropped == {"fox": 1}


def test_a_worker_killed_mid_stream_is_replaced_and_the_run_charged_once(
    request: pytest.FixtureRequest,
    settings: Settings,
    client: ApiClient,
    db: Database,
    fake_llm: FakeLlm,
    celery_app: Celery,
) -> None:
    """kill -9 while the provider holds the stream after 3 chunks: another worker streams the
    reply again as attempt 2, the 3 chunks sent are marked void, and only attempt 2 is charged."""
    fake_llm.stream_script("fox", StreamScript(CHUNKS, hold_after=3))
    with worker_subprocess(
        settings, "runs", CONVEYOR_WORKFLOW_MODULES=MODULES, LLM_STREAM_FLUSH_SECONDS="0"
    ) as first_worker:
        run_id = submit(client, "fox")
        assert fake_llm.holding.wait(60), "the first worker never streamed"
        wait_until(
            lambda: len(tokens(events_of(client, run_id))) == 3, 10, "3 chunks stored as events"
        )
        first_worker.send_signal(signal.SIGKILL)
        first_worker.wait(timeout=10)
    wait_until(lambda: fake_llm.abandoned["fox"] == 1, 10, "the held stream being dropped")
    request.getfixturevalue("worker")  # a second worker, on every queue
    # Beat's reaper, fired by hand: once the lease expires it hands the run to the new worker.
    view = finish_with_reaper(client, celery_app, run_id, LEASE_SECONDS + 20)
    events = events_of(client, run_id)

    assert view["status"] == "completed", view
    assert fake_llm.abandoned == {"fox": 1}
    assert fake_llm.completed == {"fox": 1}
    assert stream_events(events) == [
        ("step_tokens", 1, 0),
        ("step_tokens", 1, 1),
        ("step_tokens", 1, 2),
        ("step_tokens_discarded", 1, len("".join(CHUNKS[:3]))),
        *(("step_tokens", 2, index) for index in range(len(CHUNKS))),
    ]
    assert view["output"]["text"] == "".join(tokens(events, attempt=2)) == "".join(CHUNKS)
    assert charges(db, run_id) == [(f"run:{run_id}:step:0:attempt:2", 1, len(CHUNKS))]


@pytest.mark.usefixtures("worker")
def test_submit_follow_prints_the_streamed_text(live_server: LiveServer, fake_llm: FakeLlm) -> None:
    fake_llm.stream_script("fox", StreamScript(CHUNKS))

    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "submit", "stream_reply", "--input",
         '{"prompt": "fox"}', "--follow", "--url", live_server.url,
         "--token", token_for(uuid.uuid4())],
        env={k: v for k, v in os.environ.items() if k != "CONVEYOR_TOKEN"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "\n" + "".join(CHUNKS) + "\n" in result.stdout
    assert "100% completed" in result.stdout
