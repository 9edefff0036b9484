"""Read a JSON request body into a pydantic model, with a clear 400 for each way it is wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from conveyor.errors import InvalidContentType, InvalidInput, InvalidJSON

Model = TypeVar("Model", bound=BaseModel)


def reject_nul(value: object) -> None:
    """InvalidInput for a NUL character in any string: Postgres text and jsonb cannot hold one."""
    pending: list[object] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput("Strings cannot contain NUL (\\u0000) characters.")
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def read_body() -> bytes:
    """The raw body, or 413 when it is over the request's limit, also when sent chunked."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    # A chunked body has no Content-Length for werkzeug to check, and its stream stops quietly
    # at the limit; a body that filled it is taken as over it (one byte stricter than declared).
    if request.content_length is None and limit is not None and len(data) >= limit:
        raise RequestEntityTooLarge()
    return data


def require_json() -> None:
    """InvalidContentType unless the request says its body is JSON."""
    if request.mimetype != "application/json":
        raise InvalidContentType(
            f"Content-Type must be application/json, not {request.mimetype or 'missing'}."
        )


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def json_object(body: bytes, *, exact_numbers: bool = False) -> dict[str, Any]:
    """body as a JSON object, or InvalidJSON / InvalidInput saying what is wrong. exact_numbers
    reads numbers with a fraction or exponent as Decimal (money stays exact)."""
    try:
        if exact_numbers:
            raw = json.loads(body, parse_float=Decimal, parse_constant=_not_json)
        else:
            raw = json.loads(body)
    except ValueError as exc:  # also a UnicodeDecodeError, or an integer too long to read
        raise InvalidJSON(f"The body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise InvalidJSON("The body nests too deeply to parse.") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("The body must be a JSON object.")
    # JSON carries a NUL only escaped, so only such bodies need the (costly) walk.
    if b"\\u0000" in body:
        reject_nul(raw)
    return raw


def parse_body(model: type[Model], reshape: Callable[[Any], Any] | None = None) -> Model:
    """The body as `model`, or InvalidContentType / InvalidJSON / InvalidInput naming the fields.
    reshape, if given, turns a body `model` refuses as it is into the form it takes."""
    require_json()
    body = read_body() or b"null"
    # A valid body, the common case, is parsed and validated in one pass by pydantic-core. What
    # it refuses takes the slower path below, which names what is wrong (JSON, shape or fields);
    # so does a body with an escaped NUL, which needs the walk.
    if b"\\u0000" not in body:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            pass
    raw = json_object(body)
    if reshape is not None:
        raw = reshape(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "request body") from exc


def parse_query(model: type[Model]) -> Model:
    """The query string as `model`, or InvalidInput naming the offending parameters."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "query") from exc


IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header (1 to 255 characters), if any."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput(f"{IDEMPOTENCY_HEADER} must be 1 to 255 characters.")
    return key
