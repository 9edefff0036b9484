"""`/api/notifications`: the caller's notifications, newest first, and marking them read."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from conveyor.events import notifications
from conveyor.pagination import PageQuery
from web.body import parse_query
from web.context import get_db, get_principal
from web.openapi import contract

bp = Blueprint("notifications", __name__)


class NotificationsQuery(PageQuery):
    """`?unread=true|false&limit=&cursor=`."""

    unread: bool = False


@bp.get("/api/notifications")
@contract({200: "application/json"}, query=NotificationsQuery)
def list_notifications() -> Response:
    """`{notifications, unread_count, next_cursor}`; `?unread=true` lists unread ones only."""
    query = parse_query(NotificationsQuery)
    principal = get_principal()
    user_id = principal.require_user()
    claims = principal.rls_claims()
    notes, next_cursor = notifications.list_notifications(
        get_db(),
        claims,
        user_id=user_id,
        unread=query.unread,
        limit=query.limit,
        cursor=query.cursor,
    )
    return jsonify(
        {
            "notifications": [note.view() for note in notes],
            "unread_count": notifications.unread_count(get_db(), claims, user_id),
            "next_cursor": next_cursor,
        }
    )


def notification_uuid(notification_id: str) -> UUID:
    """The id in the path; a malformed one cannot name a notification (404)."""
    try:
        return UUID(notification_id)
    except ValueError:
        raise notifications.NotificationNotFound(
            f"notification {notification_id!r} does not exist"
        ) from None


@bp.get("/api/notifications/<notification_id>")
@contract({200: "application/json"})
def get_notification(notification_id: str) -> Response:
    """One notification; someone else's (or a malformed id) answers 404."""
    principal = get_principal()
    note = notifications.get_notification(
        get_db(),
        principal.rls_claims(),
        principal.require_user(),
        notification_uuid(notification_id),
    )
    return jsonify(note.view())


@bp.post("/api/notifications/<notification_id>/read")
@contract({200: "application/json"})
def mark_read(notification_id: str) -> Response:
    """Mark one notification read; someone else's (or a malformed id) answers 404."""
    principal = get_principal()
    principal.require_user()
    note = notifications.mark_read(
        get_db(), principal.rls_claims(), notification_uuid(notification_id)
    )
    return jsonify(note.view())


@bp.post("/api/notifications/read-all")
@contract({200: "application/json"})
def mark_all_read() -> Response:
    """Mark every unread notification of the caller read: `{marked}`."""
    principal = get_principal()
    marked = notifications.mark_all_read(get_db(), principal.rls_claims(), principal.require_user())
    return jsonify({"marked": marked})
