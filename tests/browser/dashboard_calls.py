"""Browser steps the dashboard tests share: sign in, open a run, wait for what the page shows."""

from __future__ import annotations

from collections.abc import Callable

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

# Longer than the page's list refresh (4 s), so "appears" does not depend on luck.
APPEAR_SECONDS = 15


def wait_for(
    browser: webdriver.Chrome,
    what: str,
    check: Callable[[webdriver.Chrome], object],
    timeout: float,
) -> object:
    """check(browser) until it is truthy; fail naming what was awaited (with the page's state)."""
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(check)
    except Exception as exc:
        rows = browser.execute_script(
            "return [...document.querySelectorAll('#runs tbody tr')].map(r => r.outerHTML)"
        )
        error = texts(browser, "#error")
        raise AssertionError(
            f"not seen within {timeout} s: {what}; rows={rows} error={error!r}"
        ) from exc


# Read in one script: the page re-renders rows every second, so element handles go stale.
ROW_STATUS = """
const row = document.querySelector(`#runs tr[data-run-id="${arguments[0]}"]`);
return row ? [row.dataset.status, row.dataset.liveStatus] : null;
"""


def row_status(browser: webdriver.Chrome, run_id: str) -> tuple[str, str] | None:
    """(status shown, last status received over the websocket) of a run's row, if listed."""
    found = browser.execute_script(ROW_STATUS, run_id)
    return None if found is None else (found[0], found[1])


def texts(browser: webdriver.Chrome, selector: str) -> list[str]:
    """The text of every element matching selector, read at one instant."""
    found: list[str] = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector
    )
    return found


def sign_in(browser: webdriver.Chrome, url: str, token: str) -> None:
    """Open the dashboard and sign in with token; wait until its websocket is open."""
    browser.get(url + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()
    wait_for(browser, "the dashboard", lambda b: b.find_element(By.ID, "app").is_displayed(), 10)
    wait_for(
        browser,
        "the websocket open",
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ws-state") == "open",
        10,
    )


def open_detail(browser: webdriver.Chrome, run_id: str) -> None:
    """Click the run's row once it is listed: its detail opens."""
    wait_for(browser, "the run listed", lambda b: row_status(b, run_id), APPEAR_SECONDS)
    browser.execute_script(
        "document.querySelector(`#runs tr[data-run-id='${arguments[0]}']`).click()", run_id
    )
