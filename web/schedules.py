"""`/api/schedules`: a user's workflows on a cron expression in an IANA timezone; pause and resume
with PATCH. Only the owner sees a schedule; anyone else's answers 404."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from conveyor.ops import user_schedules
from conveyor.ops.schedule import utc_now
from conveyor.ops.user_schedules import (
    ScheduleCreate,
    ScheduleNotFound,
    ScheduleUpdate,
    ScheduleView,
)
from conveyor.pagination import PageQuery
from web.body import parse_body
from web.context import get_db, get_principal
from web.openapi import contract, listing
from web.pages import own_page

bp = Blueprint("schedules", __name__)


def schedule_id_of(raw: str) -> UUID:
    """The schedule id in a path, or 404 (a malformed id names no schedule)."""
    try:
        return UUID(raw)
    except ValueError:
        raise ScheduleNotFound(f"schedule {raw!r} does not exist") from None


@bp.post("/api/schedules")
@contract({201: ScheduleView}, body=ScheduleCreate)
def create_schedule() -> tuple[Response, int]:
    """Schedule a workflow with its inputs: 201 with when it fires next."""
    body = parse_body(ScheduleCreate)
    view = user_schedules.create_schedule(get_db(), get_principal().require_user(), body, utc_now())
    return jsonify(view.model_dump(mode="json")), 201


@bp.get("/api/schedules")
@contract({200: listing("schedules", ScheduleView)}, query=PageQuery)
def list_schedules() -> Response:
    """`{schedules, next_cursor}`: the caller's schedules, newest first."""
    return own_page("schedules", user_schedules.list_schedules)


@bp.get("/api/schedules/<schedule_id>")
@contract({200: ScheduleView})
def get_schedule(schedule_id: str) -> Response:
    """One of the caller's schedules."""
    view = user_schedules.get_schedule(
        get_db(), get_principal().require_user(), schedule_id_of(schedule_id)
    )
    return jsonify(view.model_dump(mode="json"))


@bp.patch("/api/schedules/<schedule_id>")
@contract({200: ScheduleView}, body=ScheduleUpdate)
def update_schedule(schedule_id: str) -> Response:
    """Change inputs, cron or timezone, or pause (`paused: true`) and resume (`false`)."""
    body = parse_body(ScheduleUpdate)
    view = user_schedules.update_schedule(
        get_db(), get_principal().require_user(), schedule_id_of(schedule_id), body, utc_now()
    )
    return jsonify(view.model_dump(mode="json"))


@bp.delete("/api/schedules/<schedule_id>")
@contract({204: None})
def delete_schedule(schedule_id: str) -> tuple[str, int]:
    """Delete a schedule (the runs it started stay): 204."""
    user_schedules.delete_schedule(
        get_db(), get_principal().require_user(), schedule_id_of(schedule_id)
    )
    return "", 204
