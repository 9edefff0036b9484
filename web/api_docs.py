"""`GET /api/openapi.json`, the contract built once from the routes, and `GET /api/docs`, Swagger UI
over it with its assets from the flask-swagger-ui package (nothing is loaded from elsewhere)."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from web.auth import public
from web.openapi import build_spec, contract

SPEC_URL = "/api/openapi.json"
# Swagger UI's own files; our page and its start script carry no inline code.
bp = Blueprint(
    "api_docs",
    __name__,
    static_folder=str(files("flask_swagger_ui") / "dist"),
    static_url_path="/static/swagger-ui",
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Conveyor API</title>
  <link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{SPEC_URL}"></div>
  <script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/static/docs/start.js"></script>
</body>
</html>
"""
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def spec() -> dict[str, Any]:
    """The app's OpenAPI document, built on first use (routes do not change after start)."""
    cached: dict[str, Any] | None = current_app.extensions.get("conveyor.openapi")
    if cached is None:
        cached = current_app.extensions["conveyor.openapi"] = build_spec(current_app)
    return cached


@bp.get(SPEC_URL)
@public
@contract({200: "application/json"}, auth=None)
def openapi_json() -> Response:
    """This API's OpenAPI 3.1 document."""
    return jsonify(spec())


@bp.get("/api/docs")
@public
@contract({200: "text/html"}, auth=None)
def docs() -> Response:
    """Swagger UI over the OpenAPI document."""
    response = Response(PAGE, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def init_app(app: Flask) -> None:
    """Serve the contract and its documentation page."""
    app.register_blueprint(bp)
