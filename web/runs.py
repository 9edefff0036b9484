"""`/api/runs`: read a run."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor import runs
from web.context import get_db, get_principal

bp = Blueprint("runs", __name__)


@bp.get("/api/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """A run with its steps; someone else's run answers 404 like a missing one."""
    view = runs.get_run(get_db(), get_principal().rls_claims(), runs.parse_run_id(run_id))
    return jsonify(view.model_dump(mode="json"))
