"""`/api/admin`: what only admins may see."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from conveyor.errors import InvalidInput
from conveyor.identity import audit_entries
from web.auth import require_admin
from web.context import get_db

bp = Blueprint("admin", __name__)


@bp.get("/api/admin/audit-logs")
def audit_logs() -> Response:
    """Newest audit entries first: `?limit=` (1..200, default 50) and `?before=<id>` to page."""
    require_admin()
    try:
        limit = int(request.args.get("limit", "50"))
        before = int(request.args["before"]) if "before" in request.args else None
    except ValueError as exc:
        raise InvalidInput("limit and before must be integers.") from exc
    if not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200.")
    entries = audit_entries(get_db(), limit=limit, before_id=before)
    return jsonify({"entries": entries})
