"""Read a JSON request body into a pydantic model, with a clear 400 for each way it is wrong."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from conveyor.errors import InvalidContentType, InvalidInput, InvalidJSON

Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model]) -> Model:
    """The body as `model`, or InvalidContentType / InvalidJSON / InvalidInput naming the fields."""
    if request.mimetype != "application/json":
        raise InvalidContentType(
            f"Content-Type must be application/json, not {request.mimetype or 'missing'}."
        )
    try:
        raw = json.loads(request.get_data(cache=True) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("The body must be a JSON object.")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "request body") from exc
