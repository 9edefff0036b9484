"""The dashboard's flow-control card: runs held by concurrency key and the credits held for model
calls in progress."""

from __future__ import annotations

import uuid

from selenium import webdriver

from conveyor.db import Database
from conveyor.ledger.reservations import HoldKey, reserve
from conveyor.runs.dispatch import Hold, dispatch_runs
from conveyor.steps.base import CallEstimate
from tests.browser.dashboard_calls import APPEAR_SECONDS, sign_in, texts, wait_for
from tests.support import LiveServer, new_run, token_for


def test_the_flow_card_lists_held_runs_by_key_with_runs_in_flight_and_limit(
    browser: webdriver.Chrome, live_server: LiveServer, db: Database
) -> None:
    key = f"tenant-{uuid.uuid4()}"
    for _ in range(3):
        new_run(db, hold=Hold(key, 2))
    dispatch_runs(db, 16)

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))

    wait_for(
        browser,
        "the key listed",
        lambda b: texts(b, f"#held-keys tr[data-key='{key}'] td.num") == ["1", "2 / 2"],
        APPEAR_SECONDS,
    )


def test_the_flow_card_lists_credits_held_for_a_model_call(
    browser: webdriver.Chrome, live_server: LiveServer, db: Database
) -> None:
    user = uuid.uuid4()
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user,))
        conn.execute("update user_accounts set credit_balance = 500 where user_id = %s", (user,))
    run = new_run(db, user_id=user)
    estimate = CallEstimate("openai", "gpt-4o-mini", 100, 200, 135)
    held = reserve(db, user, HoldKey(run.id, 1, 0, None, 1), estimate, 1_000_000)
    assert held.reserved

    sign_in(browser, live_server.url, token_for(uuid.uuid4(), admin=True))

    wait_for(
        browser,
        "the hold listed",
        lambda b: texts(b, f"#reservations tr[data-run='{run.id}'] td.num")[1:] == ["135", "300"],
        APPEAR_SECONDS,
    )
