"""Websockets `/api/ws/workflows`, `/api/ws/notifications`, `/api/ws/analytics` (flask-sock).

Each socket is served by its own thread, which alone writes to it: client messages, deliveries
from the process's hub and replays from Postgres are handled in order, so a replay and the live
stream never interleave. docs/realtime.md describes the protocol.
"""

from __future__ import annotations

from typing import Any

import structlog
from flask import Blueprint, Flask, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from conveyor import metrics
from conveyor.auth.tokens import Principal, TokenVerifier, bearer_token
from conveyor.errors import ConveyorError, Unauthorized
from conveyor.settings import Settings
from web.auth import public
from web.openapi import contract
from web.realtime import Hub, Outbox
from web.realtime_protocol import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Channel,
)
from web.ws_session import MAX_CLOSE_REASON, SocketSession

log = structlog.get_logger(__name__)

bp = Blueprint("ws", __name__)
sock = Sock()


def authenticate(verifier: TokenVerifier) -> Principal:
    """The caller from `?token=` or `Authorization: Bearer`; Unauthorized saying what is wrong."""
    token = request.args.get("token") or bearer_token(request.headers.get("Authorization"))
    principal = verifier.verify(token)
    if principal.user_id is None:
        raise Unauthorized("Websockets act for a user; connect with a user's access token.")
    return principal


def serve(ws: Any, channel: Channel) -> None:
    """Authenticate, then serve the socket until it closes."""
    settings: Settings = current_app.extensions["conveyor.settings"]
    hub: Hub = current_app.extensions["conveyor.hub"]
    try:
        principal = authenticate(current_app.extensions["conveyor.verifier"])
    except ConveyorError as exc:
        ws.close(reason=CLOSE_POLICY, message=f"{exc.code}: {exc.message}"[:MAX_CLOSE_REASON])
        return
    if not hub.ensure_started():
        ws.close(reason=CLOSE_TRY_AGAIN_LATER, message="Realtime is unavailable; retry shortly.")
        return
    session = SocketSession(
        ws=ws,
        principal=principal,
        channel=channel,
        db=current_app.extensions["conveyor.db"],
        hub=hub,
        outbox=Outbox(settings.ws_queue_size, ws.event),
    )
    hub.attach(session)
    connections = metrics.WEBSOCKET_CONNECTIONS.labels(channel)
    connections.inc()
    try:
        session.serve(settings.ws_ping_seconds)
    except (ConnectionClosed, OSError):
        pass  # the client went away, or the hub cut off a socket that stopped reading
    except Exception:
        log.exception("websocket_failed", channel=channel)
        session.close(1011, "Internal error; it has been logged. Reconnect with `since`.")
    finally:
        connections.dec()
        hub.detach(session)


@sock.route("/api/ws/workflows", bp=bp)
@public
@contract({101: None})
def workflows(ws: Any) -> None:
    """Run status: `workflow_run:<id>` (one run) or `user:<id>` (a user's runs)."""
    serve(ws, "workflows")


@sock.route("/api/ws/notifications", bp=bp)
@public
@contract({101: None})
def notifications_socket(ws: Any) -> None:
    """A user's notifications: `user:<id>`."""
    serve(ws, "notifications")


@sock.route("/api/ws/analytics", bp=bp)
@public
@contract({101: None})
def analytics_socket(ws: Any) -> None:
    """KPIs and trends: `lead_trends`, `conversation_trends`, `usage_trends`, `run_stats`,
    `revenue`."""
    serve(ws, "analytics")


def decline_compression() -> None:
    """Before the handshake: drop the client's extension offer, so no permessage-deflate."""
    if not current_app.extensions["conveyor.settings"].ws_compression:
        request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


bp.before_request(decline_compression)


def init_app(app: Flask, settings: Settings) -> None:
    """Register the websocket routes and this process's hub."""
    assert settings.redis_url is not None
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": settings.ws_max_message_bytes}
    app.extensions["conveyor.hub"] = Hub(
        settings.redis_url,
        send_grace_seconds=settings.ws_send_grace_seconds,
        shared_frames=not settings.ws_compression,
    )
    app.register_blueprint(bp)
