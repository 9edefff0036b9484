"""`/api/analytics`: KPIs against the previous period and trends; admins see everyone's figures,
users their own."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from conveyor.auth.tenancy import has_admin_role
from conveyor.ops import analytics
from web.body import parse_query
from web.context import get_db, get_principal
from web.openapi import contract

bp = Blueprint("analytics", __name__)


def scope() -> tuple[UUID | None, str]:
    """(user to restrict to, or None for everyone; the scope's name) for the caller."""
    principal = get_principal()
    user_id = principal.require_user()
    if principal.is_admin or has_admin_role(get_db(), user_id):
        return None, "all"
    return user_id, "own"


@bp.get("/api/analytics/overview")
@contract({200: "application/json"}, query=analytics.OverviewQuery)
def overview() -> Response:
    """`?days=` (1..365, default 30): runs, success rate, tokens, cost, revenue and active users,
    each `{value, previous, change}` (change in percent, null when there was nothing before), and
    seed 001's `total_leads`, `active_conversations`, `conversion_rate`, `total_revenue`."""
    query = parse_query(analytics.OverviewQuery)
    user_id, name = scope()
    figures = analytics.overview(
        get_db(), get_principal().rls_claims(), days=query.days, user_id=user_id
    )
    return jsonify({"scope": name, **figures})


@bp.get("/api/analytics/trends")
@contract({200: "application/json"}, query=analytics.TrendsQuery)
def trends() -> Response:
    """`?metric=&start=&end=&aggregation=daily|hourly`: `{series: [{date, value}]}` in UTC; seed
    001's `topic=lead_trends|conversation_trends`, `start_date` and `end_date` are taken too."""
    query = parse_query(analytics.TrendsQuery)
    user_id, name = scope()
    figures = analytics.trends(get_db(), get_principal().rls_claims(), query, user_id=user_id)
    return jsonify({"scope": name, **figures})
