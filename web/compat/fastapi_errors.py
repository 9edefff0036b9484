"""Error bodies for FastAPI clients (seeds 002 and 004): Conveyor's `{error, code}` with FastAPI's
`detail` beside it, and a body FastAPI would refuse answered 422 with its list of problems.
Other frameworks' adapters with a `detail` (seed 003's Django REST framework) install the same
handlers with their own answer to ConveyorError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from flask import Blueprint, Response, current_app
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from conveyor.errors import ConveyorError, InvalidContentType, InvalidInput, InvalidJSON
from web.errors import handle_conveyor_error, handle_http_exception, handle_unstorable

# FastAPI answers 422 Unprocessable Entity for a body that fails validation, however it fails.
VALIDATION_STATUS = 422
BODY_ERRORS = (InvalidInput, InvalidJSON, InvalidContentType)


def validation_detail(exc: ConveyorError) -> list[dict[str, Any]]:
    """FastAPI's `detail` for a refused body: one `{type, loc, msg, input}` per problem."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return [
            {
                "type": error["type"],
                "loc": ["body", *error["loc"]],
                "msg": error["msg"],
                "input": error.get("input"),
            }
            for error in cause.errors(include_url=False, include_context=False)
        ]
    kind = "json_invalid" if isinstance(exc, InvalidJSON) else "model_attributes_type"
    return [{"type": kind, "loc": ["body"], "msg": exc.message}]


def with_detail(response: Response, detail: Any) -> Response:
    """The JSON error body with `detail` added (the message when no detail is given)."""
    body = response.get_json(silent=True)
    if isinstance(body, dict) and "detail" not in body:
        body["detail"] = body.get("error") if detail is None else detail
        response.set_data(current_app.json.dumps(body))
    return response


def conveyor_error(exc: ConveyorError) -> tuple[Response, int]:
    """Our errors, with `detail`; body refusals as 422."""
    response, status = handle_conveyor_error(exc)
    if isinstance(exc, BODY_ERRORS):
        return with_detail(response, validation_detail(exc)), VALIDATION_STATUS
    return with_detail(response, None), status


def http_error(exc: HTTPException) -> tuple[Response, int]:
    """Werkzeug's errors raised in a view (413), with `detail`."""
    response, status = handle_http_exception(exc)
    return with_detail(response, None), status


def unstorable(exc: psycopg.DataError) -> tuple[Response, int]:
    """A value Postgres refuses, with `detail`."""
    response, status = handle_unstorable(exc)
    return with_detail(response, None), status


ErrorAnswer = Callable[[ConveyorError], tuple[Response, int]]


def install(bp: Blueprint, on_conveyor_error: ErrorAnswer = conveyor_error) -> None:
    """Answer the errors of bp's requests (its auth and rate limit included) with `detail`: ours
    through on_conveyor_error (FastAPI's shape by default), werkzeug's and Postgres's with the
    message as `detail`."""
    bp.register_error_handler(ConveyorError, on_conveyor_error)
    bp.register_error_handler(HTTPException, http_error)
    bp.register_error_handler(psycopg.DataError, unstorable)
