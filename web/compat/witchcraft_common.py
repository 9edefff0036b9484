"""What seed 000's adapter modules share: the blueprint, request bodies in camelCase (Witchcraft's
parameter names) or snake_case (its columns' and Conveyor's), read with decimals intact, and who
the request acts for."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from flask import Blueprint
from pydantic import AliasChoices, BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from conveyor.auth.tokens import Principal
from conveyor.errors import Forbidden, InvalidInput, InvalidJSON
from conveyor.ledger import accounts
from web.body import IDEMPOTENCY_HEADER, idempotency_key, json_object, read_body, require_json
from web.context import get_db

bp = Blueprint("witchcraft", __name__)

Model = TypeVar("Model", bound=BaseModel)
View = TypeVar("View", bound=Callable[..., object])


def post(rule: str) -> Callable[[View], View]:
    """Serve `POST rule` and its trailing-slash form, which Express's default routing matches."""

    def register(view: View) -> View:
        for path in (rule, rule + "/"):
            bp.add_url_rule(path, view_func=view, methods=["POST"])
        return view

    return register


class WitchcraftBody(BaseModel):
    """A seed 000 request body: each field by its camelCase name or its snake_case one (not both
    with different values); unknown fields are ignored, as an Express handler ignores them."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                names = [name]
                if isinstance(info.validation_alias, AliasChoices):
                    names += [str(choice) for choice in info.validation_alias.choices]
                elif info.alias:
                    names.append(info.alias)
                sent = {key: data[key] for key in dict.fromkeys(names) if key in data}
                if len({json.dumps(value, default=str) for value in sent.values()}) > 1:
                    raise ValueError(f"send one of {' or '.join(sent)}, not both")
        return data


def parse_witchcraft_body(model: type[Model]) -> Model:
    """The JSON body as model, numbers with a fraction or exponent read as Decimal (money is then
    exact); InvalidContentType / InvalidJSON / InvalidInput naming what is wrong."""
    require_json()
    body = read_body() or b"null"
    raw = json_object(body, exact_numbers=True)
    # An escaped surrogate: Python reads a lone one into a str UTF-8 (and Postgres) cannot hold.
    if b"\\ud" in body.lower():
        try:
            json.dumps(raw, ensure_ascii=False, default=str).encode()
        except UnicodeEncodeError as exc:
            raise InvalidJSON("The body has a lone UTF-16 surrogate (\\ud800-\\udfff).") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "request body") from exc


def client_key(sent: str | None, max_length: int) -> str | None:
    """The request's idempotency key: the Idempotency-Key header or the body's idempotencyKey
    (the same one if both are sent), at most max_length characters."""
    header = idempotency_key()
    if header is not None and sent is not None and header != sent:
        raise InvalidInput(f"The {IDEMPOTENCY_HEADER} header and idempotencyKey differ.")
    key = header if header is not None else sent
    if key is not None and not 1 <= len(key) <= max_length:
        raise InvalidInput(f"An idempotency key must be 1 to {max_length} characters.")
    return key


def acting_user(principal: Principal, named: UUID | None, *, service_scope: str | None) -> UUID:
    """Whom the request acts for: a user's token acts for that user (another `userId` is 403: a
    token must not spend or read another user's quota); a service token with service_scope, when
    given, acts for the user it names."""
    if principal.is_service and service_scope is not None:
        principal.require_scope(service_scope)
        if named is None:
            raise InvalidInput("A service token acts for a user: send userId.")
        accounts.require_known_user(get_db(), named)
        return named
    user_id = principal.require_user()
    if named is not None and named != user_id:
        raise Forbidden(
            "userId names another user; a user's token acts for that user only (omit userId)."
        )
    return user_id
