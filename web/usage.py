"""`/api/user/quota`, `/api/user/usage-summary`, `/api/usage/events`: the caller's own usage."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import ledger
from conveyor.ledger import accounts
from conveyor.pagination import PageQuery
from web.body import parse_query
from web.context import get_db, get_principal
from web.openapi import contract, listing
from web.pages import own_page

bp = Blueprint("user_usage", __name__)


@bp.get("/api/user/quota", strict_slashes=False)  # seed 000 (Express) calls either form
@contract({200: accounts.QuotaView})
def quota() -> Response:
    """The plan's limits, what is used and what remains, and when each resets (ISO 8601, UTC)."""
    user_id = get_principal().require_user()
    view = accounts.quota_view(ledger.remaining_quota(get_db(), user_id))
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/user/usage-summary", strict_slashes=False)  # seed 000 (Express) calls either form
@contract({200: "application/json"}, query=accounts.UsageSummaryQuery)
def usage_summary() -> Response:
    """Totals, by model and by day over the last `?days=` (1..366, default 30)."""
    query = parse_query(accounts.UsageSummaryQuery)
    user_id = get_principal().require_user()
    return jsonify(ledger.activity_summary(get_db(), user_id, query.days))


@bp.get("/api/usage/events")
@contract({200: listing("events", accounts.UsageEventView)}, query=PageQuery)
def usage_events() -> Response:
    """The caller's usage events, newest first: `?limit=&cursor=`."""
    return own_page("events", accounts.list_usage_events)
