"""Health: `GET /api/health` (both dependencies' state), `GET /livez` (the process serves
requests) and `GET /readyz` (its dependencies answer), the last two for orchestrators' probes."""

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
    """`GET /api/health` and `GET /readyz`: each dependency's state."""

    status: Literal["ok", "degraded"]
    postgres: Literal["ok", "down"]
    redis: Literal["ok", "down"]


class LiveView(BaseModel):
    """`GET /livez`: the process answers."""

    status: Literal["ok"]


bp = Blueprint("health", __name__)

State = Literal["ok", "down"]


def check_dependencies() -> HealthView:
    """Ping Postgres and Redis (each bounded by its client's timeouts)."""
    postgres: State = "ok"
    try:
        get_db().ping()
    except ServiceUnavailable:
        postgres = "down"
    redis_state: State = "ok" if get_publisher().ping() else "down"
    return HealthView(
        status="ok" if postgres == redis_state == "ok" else "degraded",
        postgres=postgres,
        redis=redis_state,
    )


def answer(view: HealthView) -> tuple[Response, int]:
    """200 with the view, or 503 in the API's error shape naming what is down."""
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


@bp.get("/api/health")
@public
@contract({200: HealthView}, auth=None)
def health() -> tuple[Response, int]:
    """200 when both dependencies answer; 503 naming the ones that do not."""
    return answer(check_dependencies())


@bp.get("/livez")
@public
@contract({200: LiveView}, auth=None)
def livez() -> tuple[Response, int]:
    """200 whenever this process serves requests; calls no dependency, so an outage of Postgres
    or Redis never gets a healthy process restarted."""
    return jsonify(LiveView(status="ok").model_dump()), 200


@bp.get("/readyz")
@public
@contract({200: HealthView}, auth=None)
def readyz() -> tuple[Response, int]:
    """200 when Postgres and Redis answer (send traffic here); 503 naming the ones that do not."""
    return answer(check_dependencies())
