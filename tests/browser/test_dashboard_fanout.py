"""The dashboard's run detail shows a map's items by state and a parent's child runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from selenium import webdriver

from conveyor.settings import Settings

# Registers map_collect and parent_awaits_double.
from tests import child_workflows_for_tests, fanout_workflows_for_tests  # noqa: F401
from tests.browser.dashboard_calls import open_detail, sign_in, texts, wait_for
from tests.support import ApiClient, LiveServer, token_for, wait_for_run


def submit(client: ApiClient, workflow_id: str, inputs: dict[str, Any]) -> str:
    """Start a run asynchronously and wait until it ends; its id."""
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": workflow_id, "inputs": inputs, "async": True},
    )
    assert response.status_code == 202, response.text
    run_id = str(response.json()["workflow_run_id"])
    assert wait_for_run(client, run_id, timeout=60)["status"] == "completed"
    return run_id


def test_a_maps_step_shows_its_items_by_state(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    make_client: Callable[..., ApiClient],
    settings: Settings,
    worker: object,
) -> None:
    inputs = {"redis": str(settings.redis_url), "key": f"t:{uuid.uuid4()}", "count": 4}
    run_id = submit(make_client(uuid.uuid4()), "map_collect", {**inputs, "fail_at": [2]})

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))
    open_detail(browser, run_id)

    wait_for(
        browser,
        "the map's items by state",
        lambda b: texts(b, "#steps tr[data-step=each] td.items") == ["3/4 done · 1 failed"],
        10,
    )
    assert texts(browser, "#steps tr[data-step=list] td.items") == [""]


def test_a_parents_detail_links_its_child_run_with_its_status(
    browser: webdriver.Chrome,
    live_server: LiveServer,
    make_client: Callable[..., ApiClient],
    worker: object,
) -> None:
    client = make_client(uuid.uuid4())
    run_id = submit(client, "parent_awaits_double", {"n": 21})
    child = client.get(f"/api/runs/{run_id}").json()["children"][0]

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))
    open_detail(browser, run_id)

    wait_for(
        browser,
        "the child run listed",
        lambda b: texts(b, "#detail-summary dd[data-field=children] a") == [child["id"][:8]],
        10,
    )
    assert texts(browser, "#detail-summary dd[data-field=children] .pill") == ["completed"]
