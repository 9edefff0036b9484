"""Every listing has a largest page (or span) it will return; asking for more is a 400."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.support import ApiClient, token_for

# Fixed, not random: the parameter ids name it, and they must be the same in every process
# collecting the tests (pytest-xdist compares them).
SOME_ID = uuid.UUID("5f3d2c1b-0a9e-4d8c-b7a6-958473625140")

# (path with a query one past the maximum, whether it needs an admin)
OVER_THE_MAXIMUM = [
    ("/api/runs?limit=101", False),
    (f"/api/runs/{SOME_ID}/events?limit=1001", False),
    ("/api/agent/sessions?limit=101", False),
    (f"/api/agent/sessions/{SOME_ID}/messages?limit=501", False),
    ("/api/usage/events?limit=101", False),
    ("/api/credits/transactions?limit=101", False),
    ("/api/notifications?limit=101", False),
    ("/api/webhook-endpoints?limit=101", False),
    (f"/api/webhook-endpoints/{SOME_ID}/deliveries?limit=101", False),
    ("/api/user/usage-summary?days=367", False),
    ("/api/analytics/overview?days=366", False),
    ("/api/analytics/trends?metric=runs&aggregation=hourly&start=2000-01-01T00:00:00Z", False),
    ("/api/admin/runs?limit=101", True),
    ("/api/admin/stripe-events?limit=201", True),
    ("/api/admin/audit-logs?limit=201", True),
    ("/api/admin/run-stats?hours=2161", True),
]


@pytest.mark.parametrize(("path", "admin"), OVER_THE_MAXIMUM)
def test_a_page_over_the_maximum_is_400_invalid_input(
    make_client: Callable[..., ApiClient], path: str, admin: bool
) -> None:
    caller = make_client(token=token_for(uuid.uuid4(), admin=admin))

    response = caller.get(path)

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_INPUT"
