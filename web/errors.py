"""Every error leaves as JSON `{"error": ..., "code": ...}`, never an HTML page or a traceback."""

from __future__ import annotations

import re

import psycopg
import redis
import structlog
from flask import Flask, Response, jsonify
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

from conveyor.errors import ConveyorError, ServiceUnavailable

log = structlog.get_logger(__name__)

# A 503 says when to try again; dependencies restart in seconds.
UNAVAILABLE_RETRY_AFTER_SECONDS = 2


def http_code(exc: HTTPException) -> str:
    """A stable code from werkzeug's exception name: MethodNotAllowed -> METHOD_NOT_ALLOWED."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).upper()


def handle_conveyor_error(exc: ConveyorError) -> tuple[Response, int]:
    """Our own errors carry their status and code."""
    if exc.status >= 500:
        log.error("request_failed", code=exc.code, error=exc.message)
    response = jsonify(exc.to_dict())
    retry_after = exc.retry_after
    if retry_after is None and exc.status == 503:
        retry_after = UNAVAILABLE_RETRY_AFTER_SECONDS
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, retry_after))
    return response, exc.status


def handle_dependency_down(exc: Exception) -> tuple[Response, int]:
    """Postgres or Redis unreachable where a route called it directly: a 503 to retry, not a
    500 (Database already turns its own connection errors into ServiceUnavailable)."""
    log.warning("dependency_unavailable", error_type=type(exc).__name__, error=str(exc))
    return handle_conveyor_error(ServiceUnavailable())


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
    for unreachable in (
        psycopg.OperationalError,
        PoolTimeout,
        redis.ConnectionError,
        redis.TimeoutError,
    ):
        app.register_error_handler(unreachable, handle_dependency_down)
    app.register_error_handler(Exception, handle_unexpected)
