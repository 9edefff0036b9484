"""`/api/agent/sessions`: agent sessions (threads) and their messages. Reads go through RLS."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from conveyor.pagination import PageQuery
from conveyor.runs import sessions
from web.body import parse_body, parse_query
from web.context import get_db, get_principal
from web.openapi import contract, listing
from web.pages import own_page

bp = Blueprint("sessions", __name__)


@bp.post("/api/agent/sessions")
@contract({201: sessions.SessionView}, body=sessions.SessionCreate)
def create_session() -> tuple[Response, int]:
    """Start a session owned by the caller."""
    body = parse_body(sessions.SessionCreate)
    view = sessions.create_session(get_db(), get_principal().require_user(), body)
    return jsonify(view.model_dump(mode="json")), 201


@bp.get("/api/agent/sessions")
@contract({200: listing("sessions", sessions.SessionView)}, query=PageQuery)
def list_sessions() -> Response:
    """The caller's sessions, newest first: `?limit=&cursor=`."""
    return own_page("sessions", sessions.list_sessions)


@bp.get("/api/agent/sessions/<session_id>")
@contract({200: sessions.SessionView})
def get_session(session_id: str) -> Response:
    """One session; someone else's answers 404 like a missing one."""
    principal = get_principal()
    principal.require_user()
    view = sessions.get_session(get_db(), principal.rls_claims(), session_id)
    return jsonify(view.model_dump(mode="json"))


@bp.post("/api/agent/sessions/<session_id>/messages")
@contract({201: sessions.MessageView}, body=sessions.MessageCreate)
def add_message(session_id: str) -> tuple[Response, int]:
    """Append a message; it gets the session's next sequence number."""
    body = parse_body(sessions.MessageCreate)
    principal = get_principal()
    principal.require_user()
    view = sessions.add_message(get_db(), principal.rls_claims(), session_id, body)
    return jsonify(view.model_dump(mode="json")), 201


@bp.get("/api/agent/sessions/<session_id>/messages")
@contract({200: "application/json"}, query=sessions.MessageListQuery)
def list_messages(session_id: str) -> Response:
    """Messages in sequence order: `?since=<sequence_number>&limit=`."""
    query = parse_query(sessions.MessageListQuery)
    principal = get_principal()
    principal.require_user()
    messages = sessions.list_messages(
        get_db(), principal.rls_claims(), session_id, since=query.since, limit=query.limit
    )
    return jsonify({"messages": [m.model_dump(mode="json") for m in messages]})
