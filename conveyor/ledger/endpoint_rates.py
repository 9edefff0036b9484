"""Credits charged per API request by URL path, and the plans' API requests a day: the Django +
Supabase template's CreditUsageRate and tier limits (seed 003).

Path rates are `credit_rates` rows whose endpoint is a path (`/api/credits/`, with `{name}`
standing for one path segment, as in `/api/users/{user_id}/add_credits/`), beside the job rates
(`agent:*`, ...) that run admission charges. A request is charged through `deduct_credits`, so the
ledger's rules hold: never below zero, one movement with its balance."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from conveyor.db import Database
from conveyor.ledger.accounts import NEW_ACCOUNT_PLAN
from conveyor.ledger.balances import CreditMove, deduct_credits


class EndpointRateView(BaseModel):
    """One credit rate in the template's CreditUsageRate shape; `endpoint_path` is a URL path or
    a job key (`agent:*`, `workflow:<id>`) charged at run submission."""

    id: int
    endpoint_path: str
    credits_per_request: int
    description: str
    is_active: bool


@lru_cache(maxsize=256)
def path_pattern(endpoint_path: str) -> re.Pattern[str]:
    """The paths a rate's endpoint_path covers: itself, each `{name}` standing for one segment."""
    parts = re.split(r"\{[^/{}]+\}", endpoint_path)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def specificity(endpoint_path: str) -> tuple[int, int]:
    """Orders rates matching one path: fewer placeholders first, then the longer literal."""
    placeholders = len(re.findall(r"\{[^/{}]+\}", endpoint_path))
    return placeholders, -len(endpoint_path)


def rate_for_path(db: Database, path: str) -> tuple[str, int] | None:
    """The active path rate (endpoint_path, credits) charging a request to path, if any: an exact
    rate wins over one with placeholders."""
    with db.connection() as conn:
        rows = conn.execute(
            "select endpoint, credits from credit_rates "
            "where is_active and credits > 0 and left(endpoint, 1) = '/'"
        ).fetchall()
    matching = [row for row in rows if path_pattern(row["endpoint"]).fullmatch(path)]
    if not matching:
        return None
    best = min(matching, key=lambda row: specificity(row["endpoint"]))
    return str(best["endpoint"]), int(best["credits"])


def charge_request(db: Database, user_id: UUID, path: str) -> tuple[int, CreditMove] | None:
    """Take the credits a request to path costs (None when it is free): the credits asked and
    the movement, `applied` False (nothing taken) when the balance does not cover them."""
    rate = rate_for_path(db, path)
    if rate is None:
        return None
    _, credits = rate
    move = deduct_credits(
        db,
        user_id,
        credits,
        kind="usage",
        description=f"API request to {path}",
        endpoint=path,
    )
    return credits, move


def list_rates(
    db: Database, claims: dict[str, Any], *, limit: int, offset: int
) -> list[EndpointRateView]:
    """Every credit rate (path and job rates), in id order, read under RLS."""
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            "select id, endpoint as endpoint_path, credits as credits_per_request, description, "
            "is_active from credit_rates order by id limit %s offset %s",
            (limit, offset),
        ).fetchall()
    return [EndpointRateView.model_validate(row) for row in rows]


def daily_api_request_limit(db: Database, user_id: UUID) -> int:
    """The API requests a day the user's plan allows (the free plan's before an account exists)."""
    with db.connection() as conn:
        row = conn.execute(
            "select coalesce("
            " (select p.daily_api_request_limit from user_accounts a"
            "   join plans p on p.id = a.plan_id where a.user_id = %s),"
            " (select daily_api_request_limit from plans where id = %s), 0) as requests",
            (user_id, NEW_ACCOUNT_PLAN),
        ).fetchone()
    assert row is not None
    return int(row["requests"])
