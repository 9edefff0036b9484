"""The operators' dashboard at `/`: a static page and one script that read the admin API.

The page and its assets are public (they hold no data); every figure comes from `/api` with the
admin token the page asks for, so the API's checks are the only ones that matter.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, send_from_directory

from web.openapi import contract

bp = Blueprint(
    "dashboard",
    __name__,
    static_folder="static/dashboard",
    static_url_path="/static/dashboard",
)

# Only our own script and styles run; the websocket goes back to this host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@bp.get("/")
@contract({200: "text/html"}, auth=None)
def index() -> Response:
    """The dashboard page."""
    return send_from_directory(str(bp.static_folder), "index.html", max_age=0)


def harden(response: Response) -> Response:
    """Security headers on the page and its assets (the page handles an access token)."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


bp.after_request(harden)


def init_app(app: Flask) -> None:
    """Serve the dashboard at `/`."""
    app.register_blueprint(bp)
