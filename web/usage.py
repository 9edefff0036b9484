"""`/api/user/quota`, `/api/user/usage-summary`, `/api/usage/events`: the caller's own usage."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import accounts, ledger
from web.body import parse_query
from web.context import get_db, get_principal
from web.pages import own_page

bp = Blueprint("user_usage", __name__)


@bp.get("/api/user/quota")
def quota() -> Response:
    """The plan's limits, what is used and what remains, and when each resets (ISO 8601, UTC)."""
    user_id = get_principal().require_user()
    view = accounts.quota_view(ledger.remaining_quota(get_db(), user_id))
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/user/usage-summary")
def usage_summary() -> Response:
    """Totals, by model and by day over the last `?days=` (1..366, default 30)."""
    query = parse_query(accounts.UsageSummaryQuery)
    user_id = get_principal().require_user()
    return jsonify(ledger.activity_summary(get_db(), user_id, query.days))


@bp.get("/api/usage/events")
def usage_events() -> Response:
    """The caller's usage events, newest first: `?limit=&cursor=`."""
    return own_page("events", accounts.list_usage_events)
