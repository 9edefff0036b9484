"""`GET /api/health`: is Postgres reachable, is Redis reachable."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from conveyor.errors import ServiceUnavailable
from conveyor.models import HealthView
from web.auth import public
from web.context import get_db, get_settings

bp = Blueprint("health", __name__)


@bp.get("/api/health")
@public
def health() -> tuple[Response, int]:
    """200 when both dependencies answer; 503 naming the ones that do not."""
    try:
        get_db().ping()
        postgres = "ok"
    except ServiceUnavailable:
        postgres = "down"
    try:
        client = redis.Redis.from_url(
            get_settings().redis_url or "", socket_connect_timeout=1, socket_timeout=1
        )
        with client:
            client.ping()
        redis_state = "ok"
    except redis.RedisError:
        redis_state = "down"
    view = HealthView(
        status="ok" if postgres == redis_state == "ok" else "degraded",
        postgres=postgres,  # type: ignore[arg-type]
        redis=redis_state,  # type: ignore[arg-type]
    )
    if view.status == "ok":
        return jsonify(view.model_dump()), 200
    down = [name for name in ("postgres", "redis") if getattr(view, name) == "down"]
    body = {
        "error": f"{' and '.join(down)} unreachable",
        "code": "SERVICE_UNAVAILABLE",
        **view.model_dump(),
    }
    return jsonify(body), 503
