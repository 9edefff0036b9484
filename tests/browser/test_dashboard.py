"""The operators' dashboard in headless Chromium: an admin signs in and watches a run go from
queued to completed live, without reloading the page.

The screenshot is kept in $CONVEYOR_TEST_ARTIFACTS (default: the test's tmp_path); with
CONVEYOR_UPDATE_SCREENSHOT=1 it also replaces docs/dashboard.png.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from selenium import webdriver
from selenium.webdriver.common.by import By

import tests.workflows_for_tests  # noqa: F401 - registers tests.wait_cooperatively and nap
from conveyor import workflows
from conveyor.billing import inbox
from conveyor.db import Database
from conveyor.ledger.balances import UsageRecord, record_usage
from conveyor.ops import job_runs
from conveyor.payload import Payload
from conveyor.workflows.definitions import StepSpec, Workflow
from tests.browser.dashboard_calls import (
    APPEAR_SECONDS,
    open_detail,
    row_status,
    sign_in,
    texts,
    wait_for,
)
from tests.support import (
    ApiClient,
    LiveServer,
    close_worker_resources,
    token_for,
    wait_for_run,
)

REPO = Path(__file__).resolve().parents[2]
FINISH_SECONDS = 30
THREE_DAYS = 3 * 24 * 3600


class TourInput(Payload):
    """How long each step of the tour waits."""

    seconds: float = 0.4


workflows.define(
    Workflow(
        name="dashboard_tour",
        description="Three short cooperative waits, so progress is visible on the dashboard.",
        input_model=TourInput,
        steps=[
            StepSpec(name=name, kind="python", config={"function": "tests.wait_cooperatively"})
            for name in ("fetch", "think", "write")
        ],
    )
)


def seed_panels(db: Database, user_id: uuid.UUID) -> None:
    """Usage over a few days, a maintenance period and Stripe events, so every panel has data."""
    now = datetime.now(UTC)
    with db.transaction() as conn:
        for days_ago, tokens in ((3, 1200), (2, 5400), (1, 2600), (0, 3900)):
            record_usage(
                conn,
                user_id,
                UsageRecord(
                    idempotency_key=f"tour-{days_ago}",
                    provider="openai",
                    model="gpt-4o-mini",
                    prompt_tokens=tokens // 2,
                    completion_tokens=tokens // 2,
                    input_cost_micro_usd=tokens * 30,
                    output_cost_micro_usd=tokens * 60,
                    occurred_at=max(now - timedelta(days=days_ago), now.replace(day=1)),
                ),
            )
    job_runs.run_once(db, "usage_rollup", f"{now:%Y-%m-%dT%H}", lambda: {"rows": 4})
    for event_id, event_type in (
        ("evt_tour_paid", "invoice.paid"),
        ("evt_tour_new", "customer.created"),
    ):
        payload = json.dumps(
            {
                "id": event_id,
                "type": event_type,
                "created": int(now.timestamp()),
                "livemode": False,
                "data": {"object": {"id": "in_tour"}},
            }
        ).encode()
        inbox.store_event(db, inbox.parse_event(payload), payload)


def test_a_submitted_run_moves_from_queued_to_completed_without_reloading(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    celery_app: Celery,
    make_client: Callable[..., ApiClient],
    db: Database,
    tmp_path: Path,
) -> None:
    """The run appears queued (no worker yet), then a worker starts and the same page shows it
    completed, the last status having arrived over the websocket."""
    owner = uuid.uuid4()
    seed_panels(db, owner)
    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))
    # A reload would lose this: the same document must see the whole run.
    browser.execute_script("window.conveyorTestMarker = 'first load'")

    submitted = make_client(owner).post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "dashboard_tour", "inputs": {"seconds": 0.4}, "async": True},
    )
    assert submitted.status_code == 202, submitted.text
    run_id = submitted.json()["workflow_run_id"]

    wait_for(
        browser,
        "the run listed as queued",
        lambda b: (row_status(b, run_id) or ("",))[0] == "queued",
        APPEAR_SECONDS,
    )

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        wait_for(
            browser,
            "the run completed, live",
            lambda b: row_status(b, run_id) == ("completed", "completed"),
            FINISH_SECONDS,
        )
        assert browser.execute_script("return window.conveyorTestMarker") == "first load"
        events_received = browser.find_element(By.TAG_NAME, "body").get_attribute("data-ws-events")
        assert int(events_received or 0) >= 2  # running and completed, at least

        browser.execute_script(
            "document.querySelector(`#runs tr[data-run-id='${arguments[0]}']`).click()", run_id
        )
        wait_for(
            browser,
            "the run's steps completed in its detail",
            lambda b: texts(b, "#steps tbody td:nth-child(4)") == ["completed"] * 3,
            10,
        )
        wait_for(
            browser,
            "the final status in the event log",
            lambda b: any(
                "workflow_status_update" in line and "completed" in line
                for line in texts(b, "#events li")
            ),
            10,
        )
        wait_for(browser, "the worker's heartbeat", lambda b: texts(b, "#workers tbody tr"), 10)
        wait_for(
            browser,
            "the run counted as completed",
            lambda b: texts(b, "#counts .tile.completed .value") == ["1"],
            10,
        )

        # Replay a Stripe event from its row: the worker processes it again (one more try).
        browser.execute_script(
            "document.querySelector('tr[data-stripe-event=evt_tour_new] button').click()"
        )
        wait_for(
            browser,
            "the replayed Stripe event tried once more",
            lambda b: texts(b, "tr[data-stripe-event=evt_tour_new] td:nth-child(4)") == ["1"],
            15,
        )
        save_screenshot(browser, tmp_path)
    close_worker_resources(celery_app)


# (text, datetime attribute of its <time>) of an element, read at one instant.
TEXT_AND_TIME = """
const found = document.querySelector(arguments[0]);
const time = found && found.querySelector('time');
return found ? [found.textContent, time ? time.getAttribute('datetime') : null] : null;
"""


def test_a_waiting_runs_detail_shows_what_it_waits_for_and_when_it_wakes(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    make_client: Callable[..., ApiClient],
    worker: object,
) -> None:
    """A run sleeping for three days: the detail shows it waiting, its wake time, and its nap
    step's wait; the status filter lists it under waiting."""
    client = make_client(uuid.uuid4())
    submitted = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "nap", "inputs": {"seconds": THREE_DAYS}, "async": True},
    )
    assert submitted.status_code == 202, submitted.text
    run_id = submitted.json()["workflow_run_id"]
    view = wait_for_run(client, run_id, until=frozenset({"waiting"}))
    wake_at = view["wake_at"]
    assert wake_at

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))
    browser.execute_script(
        "const f = document.querySelector('#status-filter');"
        "f.value = 'waiting'; f.dispatchEvent(new Event('change'));"
    )
    wait_for(
        browser,
        "the run listed under waiting",
        lambda b: (row_status(b, run_id) or ("",))[0] == "waiting",
        APPEAR_SECONDS,
    )
    assert texts(browser, f"#runs tr[data-run-id='{run_id}'] .pill.waiting") == ["waiting"]
    open_detail(browser, run_id)

    wait_for(
        browser,
        "the run waiting, with its wake time",
        lambda b: (
            texts(b, "#detail-summary dd[data-field=status]") == ["waiting"]
            and (b.execute_script(TEXT_AND_TIME, "#detail-summary dd[data-field=wakes]") or [""])[1]
            == wake_at
        ),
        10,
    )
    text, step_wake_at = browser.execute_script(TEXT_AND_TIME, "#steps tr[data-step=nap] td.wait")
    assert text.startswith("sleep · until "), text
    assert step_wake_at == wake_at
    assert texts(browser, "#steps tr[data-step=nap] .pill") == ["waiting"]
    assert texts(browser, "#steps tr[data-step=before] td.wait") == [""]


def test_a_reruns_detail_names_the_run_it_reruns_and_the_steps_it_reused(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    make_client: Callable[..., ApiClient],
    worker: object,
) -> None:
    """A rerun of a finished tour from `think`: its detail links to the old run, from that step,
    and shows `fetch` reused from it (attempt 0); the link opens the old run."""
    client = make_client(uuid.uuid4())
    submitted = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "dashboard_tour", "inputs": {"seconds": 0.05}, "async": True},
    )
    assert submitted.status_code == 202, submitted.text
    old_id = submitted.json()["workflow_run_id"]
    assert wait_for_run(client, old_id)["status"] == "completed"
    answer = client.post(f"/api/runs/{old_id}/rerun", json={"from_step": "think"})
    assert answer.status_code == 202, answer.text
    new_id = answer.json()["id"]
    assert wait_for_run(client, new_id)["status"] == "completed"

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))
    open_detail(browser, new_id)

    wait_for(
        browser,
        "the rerun's origin in its detail",
        lambda b: (
            texts(b, "#detail-summary dd[data-field=rerun-of]") == [f"{old_id[:8]} from step think"]
        ),
        10,
    )
    assert texts(browser, "#steps tbody td.reused") == [old_id[:8], "", ""]
    assert texts(browser, "#steps tbody td:nth-child(5)") == ["0", "1", "1"]

    browser.execute_script("document.querySelector('#detail-summary a[data-run-id]').click()")
    wait_for(
        browser,
        "the old run's detail, opened from the link",
        lambda b: (
            texts(b, "#detail-id") == [old_id]
            and texts(b, "#detail-summary dd[data-field=status]") == ["completed"]
            and not texts(b, "#detail-summary dd[data-field=rerun-of]")
        ),
        10,
    )


def save_screenshot(browser: webdriver.Chrome, tmp_path: Path) -> Path:
    """Keep the page as a PNG artifact (and as the README's picture when asked to)."""
    folder = Path(os.environ.get("CONVEYOR_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dashboard.png"
    # The whole page, not just the first screenful.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1440, min(int(height) + 140, 4000))
    assert browser.save_screenshot(str(path)), "Chromium did not write the screenshot"
    assert path.stat().st_size > 10_000
    if os.environ.get("CONVEYOR_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(path, REPO / "docs" / "dashboard.png")
    return path


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (lambda: token_for(uuid.uuid4()), "not an admin"),
        (lambda: "not-a-token", "token"),
    ],
)
def test_sign_in_refuses_tokens_that_are_not_an_admins(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    token: Callable[[], str],
    message: str,
) -> None:
    """A user's token or garbage keeps the sign-in form up with the reason."""
    browser.get(live_server.url + "/")
    browser.find_element(By.ID, "token").send_keys(token())
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    wait_for(
        browser,
        "the refusal",
        lambda b: message in b.find_element(By.ID, "sign-in-error").text,
        10,
    )
    assert not browser.find_element(By.ID, "app").is_displayed()
