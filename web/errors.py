"""Every error leaves as JSON `{"error": ..., "code": ...}`, never an HTML page or a traceback."""

from __future__ import annotations

import re

import psycopg
import structlog
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from conveyor.errors import ConveyorError

log = structlog.get_logger(__name__)


def http_code(exc: HTTPException) -> str:
    """A stable code from werkzeug's exception name: MethodNotAllowed -> METHOD_NOT_ALLOWED."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


def handle_conveyor_error(exc: ConveyorError) -> tuple[Response, int]:
    """Our own errors carry their status and code."""
    if exc.status >= 500:
        log.error("request_failed", code=exc.code, error=exc.message)
    response = jsonify(exc.to_dict())
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, exc.retry_after))
    return response, exc.status


def handle_http_exception(exc: HTTPException) -> tuple[Response, int]:
    """Routing errors (404, 405, 413, ...) in the same JSON shape."""
    status = exc.code or 500
    return jsonify({"error": exc.description, "code": http_code(exc)}), status


def handle_unstorable(exc: psycopg.DataError) -> tuple[Response, int]:
    """Values Postgres refuses (a NUL in a query parameter, a number out of range) are the
    client's to fix, not a server fault."""
    log.info("unstorable_input", error=str(exc))
    return jsonify(
        {"error": f"A value in the request cannot be stored: {exc}", "code": "INVALID_INPUT"}
    ), 400


def handle_unexpected(exc: Exception) -> tuple[Response, int]:
    """A bug: log it with its traceback, tell the client only that it happened."""
    log.exception("unhandled_error", error_type=type(exc).__name__)
    return jsonify(
        {"error": "Internal server error; it has been logged.", "code": "INTERNAL_ERROR"}
    ), 500


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(ConveyorError, handle_conveyor_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(psycopg.DataError, handle_unstorable)
    app.register_error_handler(Exception, handle_unexpected)
