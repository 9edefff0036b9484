"""The dashboard's maintenance card lists the API schedules due next."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from selenium import webdriver

from tests import workflows_for_tests  # noqa: F401 - registers write_brief
from tests.browser.dashboard_calls import APPEAR_SECONDS, sign_in, texts, wait_for
from tests.support import ApiClient, LiveServer, token_for


def test_the_maintenance_card_lists_the_next_api_schedules(
    browser: webdriver.Chrome, live_server: LiveServer, make_client: Callable[..., ApiClient]
) -> None:
    made = make_client(uuid.uuid4()).post(
        "/api/schedules",
        json={
            "workflow_id": "write_brief",
            "inputs": {"topic": "ticks"},
            "cron": "15 3 * * *",
            "timezone": "Asia/Tokyo",
        },
    )
    assert made.status_code == 201, made.text

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))

    wait_for(
        browser,
        "the schedule listed",
        lambda b: (
            texts(b, f"#schedules tr[data-schedule='{made.json()['id']}'] td:nth-child(2)")
            == ["15 3 * * * (Asia/Tokyo)"]
        ),
        APPEAR_SECONDS,
    )
    assert texts(browser, "#schedules-count") == ["1 active · 0 paused"]
