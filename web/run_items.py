"""`GET /api/runs/<id>/items`: a run's parallel branches and map items, a page at a time."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor.runs import item_views, views
from web.body import parse_query
from web.context import get_db, get_principal
from web.openapi import contract

bp = Blueprint("run_items", __name__)


@bp.get("/api/runs/<run_id>/items")
@contract({200: item_views.ItemsPage}, query=item_views.ItemsQuery)
def list_items(run_id: str) -> Response:
    """The run's branches and map items in item order, with counts per step; the owner or an
    admin (RLS), anyone else gets 404."""
    page = item_views.list_items(
        get_db(),
        get_principal().rls_claims(),
        views.parse_run_id(run_id),
        parse_query(item_views.ItemsQuery),
    )
    return jsonify(page.model_dump(mode="json"))
