"""Calls and fixtures the seed 003 tests share (test_coming_from_django_template*.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.db import Database
from tests.support import ApiClient

CREDENTIALS = {"email": "ada@example.com", "password": "correct horse"}
ClientFactory = Callable[..., ApiClient]


@dataclass
class Clock:
    """The time the daily limits see, set by the test."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def register(anonymous: ApiClient) -> Any:
    response = anonymous.post("/api/register/", json=CREDENTIALS)
    assert response.status_code == 201, response.text
    return response.json()


def log_in(anonymous: ApiClient) -> Any:
    response = anonymous.post("/api/login/", json=CREDENTIALS)
    assert response.status_code == 200, response.text
    return response.json()


def set_daily_limit(db: Database, plan: str, requests: int) -> None:
    with db.transaction() as conn:
        conn.execute(
            "update plans set daily_api_request_limit = %s where id = %s", (requests, plan)
        )


def add_rate(db: Database, path: str, credits: int, *, active: bool = True) -> None:
    with db.transaction() as conn:
        conn.execute(
            "insert into credit_rates (endpoint, credits, description, is_active) "
            "values (%s, %s, 'Standard API request', %s)",
            (path, credits, active),
        )


def top_up(admin: ApiClient, client: ApiClient, user: uuid.UUID, amount: int) -> None:
    client.get("/api/credits/")
    response = admin.post(f"/api/users/{user}/add_credits/", json={"amount": amount})
    assert response.status_code == 200, response.text
