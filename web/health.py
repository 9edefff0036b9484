"""`GET /api/health`: is Postgres reachable, is Redis reachable."""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from conveyor.errors import ServiceUnavailable
from web.auth import public
from web.context import get_db, get_publisher
from web.errors import UNAVAILABLE_RETRY_AFTER_SECONDS
from web.openapi import contract


class HealthView(BaseModel):
    """`GET /api/health`: each dependency's state."""

    status: Literal["ok", "degraded"]
    postgres: Literal["ok", "down"]
    redis: Literal["ok", "down"]


bp = Blueprint("health", __name__)

State = Literal["ok", "down"]


@bp.get("/api/health")
@public
@contract({200: HealthView}, auth=None)
def health() -> tuple[Response, int]:
    """200 when both dependencies answer; 503 naming the ones that do not."""
    postgres: State = "ok"
    try:
        get_db().ping()
    except ServiceUnavailable:
        postgres = "down"
    redis_state: State = "ok" if get_publisher().ping() else "down"
    view = HealthView(
        status="ok" if postgres == redis_state == "ok" else "degraded",
        postgres=postgres,
        redis=redis_state,
    )
    if view.status == "ok":
        return jsonify(view.model_dump()), 200
    down = [name for name in ("postgres", "redis") if getattr(view, name) == "down"]
    body = {
        "error": f"{' and '.join(down)} unreachable",
        "code": "SERVICE_UNAVAILABLE",
        **view.model_dump(),
    }
    response = jsonify(body)
    response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    return response, 503
