"""The published contract: `@contract(...)` on each view, and an OpenAPI 3.1 document built from
the app's URL map and the pydantic models the views validate with and answer in."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, TypeVar

from flask import Flask
from pydantic import BaseModel, create_model
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule


class ErrorView(BaseModel):
    """Every error response: what went wrong, a stable code, and sometimes details."""

    error: str
    code: str
    details: dict[str, Any] | None = None


View = TypeVar("View", bound=Callable[..., object])
Auth = Literal["user", "admin", "service", "metrics"]
# A response body: a model, a media type whose body is not described further, or None (empty).
Body = type[BaseModel] | str | None

REF_TEMPLATE = "#/components/schemas/{model}"
PATH_PARAMETER = re.compile(r"<(?:(?P<converter>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}
AUTH_NOTES: dict[Auth, str] = {
    "user": "Needs a user's Supabase access token or Conveyor backend token.",
    "admin": "Admins only: a token with the admin role, or a user listed in user_roles.",
    "service": "Needs a service token (`conveyor token --service`) with the scope named here.",
    "metrics": "With METRICS_TOKEN set, needs `Authorization: Bearer <METRICS_TOKEN>`.",
}
UNAVAILABLE = "Postgres or Redis is unreachable; retry after `Retry-After` seconds."
WEBSOCKET = (
    "A websocket: connect with `Upgrade: websocket` and the token as `?token=` or a bearer "
    "header. docs/realtime.md describes the messages. A plain GET answers 400."
)


@dataclass(frozen=True)
class Contract:
    """What a view accepts and answers, as `@contract(...)` declared it."""

    responses: Mapping[int, Body]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    auth: Auth | None = "user"
    scope: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def contract(
    responses: Mapping[int, Body],
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    auth: Auth | None = "user",
    scope: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Callable[[View], View]:
    """Declare a view's body, query, success responses and caller; errors are implied.
    `headers` names optional request headers with their description."""

    def mark(view: View) -> View:
        view.conveyor_contract = Contract(  # type: ignore[attr-defined]
            responses, body, query, auth, scope, dict(headers or {})
        )
        return view

    return mark


def listing(key: str, item: type[BaseModel]) -> type[BaseModel]:
    """The model of a `{key: [item, ...], next_cursor}` page."""
    name = f"{item.__name__.removesuffix('View')}Page"
    fields: dict[str, Any] = {key: (list[item], ...), "next_cursor": (str | None, ...)}  # type: ignore[valid-type]
    return create_model(name, __doc__=f"A page of {key}, newest first.", **fields)


def openapi_path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """Flask's `/runs/<run_id>` as `/runs/{run_id}`, with its path parameters."""
    parameters = [
        {
            "name": match["name"],
            "in": "path",
            "required": True,
            "schema": CONVERTER_SCHEMAS.get(match["converter"] or "", {"type": "string"}),
        }
        for match in PATH_PARAMETER.finditer(rule.rule)
    ]
    return PATH_PARAMETER.sub(r"{\g<name>}", rule.rule), parameters


def query_value(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema as a query parameter's: a query string cannot carry null."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
    if schema.get("default", ...) is None:
        del schema["default"]
    choices = [c for c in schema.pop("anyOf", []) if c != {"type": "null"}]
    if len(choices) == 1:
        schema |= choices[0]
    elif choices:
        schema["anyOf"] = choices
    return schema


def query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A query model's JSON schema as OpenAPI query parameters."""
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": query_value(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def media(body: Body, schemas: Mapping[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    """The `content` of a response body."""
    if body is None:
        return {}
    if isinstance(body, str):
        shape = {"type": "object" if body == "application/json" else "string"}
        return {"content": {body: {"schema": shape}}}
    return {"content": {"application/json": {"schema": schemas[(body, "serialization")]}}}


def summary_of(view: Callable[..., object]) -> tuple[str, str]:
    """The docstring's first paragraph and the rest (a view's docstring is its documentation)."""
    first, _, rest = (inspect.getdoc(view) or "").partition("\n\n")
    return " ".join(first.split()), rest.strip()


def operation(
    rule: Rule,
    view: Callable[..., object],
    terms: Contract,
    schemas: Mapping[tuple[type[BaseModel], str], Any],
    components: Mapping[str, Any],
) -> dict[str, Any]:
    """One OpenAPI operation for a rule served by view; schemas holds each model's reference
    into components."""
    _, parameters = openapi_path(rule)
    summary, description = summary_of(view)
    auth = terms.auth
    notes = [description, AUTH_NOTES[auth] if auth else ""]
    if terms.scope:
        notes.append(f"Scope: `{terms.scope}`.")
    if rule.websocket:
        notes.append(WEBSOCKET)
    if terms.query is not None:
        ref = schemas[(terms.query, "validation")]["$ref"]
        parameters += query_parameters(components[ref.rpartition("/")[2]])
    parameters += [
        {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
        | {"description": text}
        for name, text in terms.headers.items()
    ]
    responses: dict[str, Any] = {
        str(status): {"description": HTTPStatus(status).phrase} | media(body, schemas)
        for status, body in terms.responses.items()
    }
    error = media(ErrorView, schemas)
    if rule.rule.startswith("/api"):
        responses["4XX"] = {"description": "The request was refused; `code` says why."} | error
        responses.setdefault("503", {"description": UNAVAILABLE} | error)
    elif auth is not None:
        responses["401"] = {"description": "The bearer token is missing or wrong."} | error
    found: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": summary,
        "tags": [rule.endpoint.partition(".")[0] if "." in rule.endpoint else "app"],
        "parameters": parameters,
        "responses": responses,
    }
    if description := "\n\n".join(note for note in notes if note):
        found["description"] = description
    if terms.body is not None:
        found["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas[(terms.body, "validation")]}},
        }
    # `{}` makes a token optional: /metrics needs one only when METRICS_TOKEN is set.
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}] if auth is not None else []
    found["security"] = [*security, {}] if auth == "metrics" else security
    return found


def documented(app: Flask) -> list[tuple[Rule, Callable[..., object], Contract]]:
    """Every routed rule but static files, with its view and contract (a bare one if none)."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        terms = getattr(view, "conveyor_contract", None) or Contract(responses={200: None})
        found.append((rule, view, terms))
    return found


def build_spec(app: Flask, *, title: str = "Conveyor", version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of app: every route with its methods, models as components."""
    routes = documented(app)
    wanted: set[tuple[type[BaseModel], JsonSchemaMode]] = {(ErrorView, "serialization")}
    for _, _, terms in routes:
        wanted.update((m, "validation") for m in (terms.body, terms.query) if m is not None)
        wanted.update(
            (body, "serialization")
            for body in terms.responses.values()
            if isinstance(body, type) and issubclass(body, BaseModel)
        )
    ordered = sorted(wanted, key=lambda pair: (pair[0].__name__, pair[1]))
    refs, definitions = models_json_schema(ordered, ref_template=REF_TEMPLATE)
    components = definitions.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for rule, view, terms in sorted(routes, key=lambda found: found[0].rule):
        path, _ = openapi_path(rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found = operation(rule, view, terms, refs, components)
            # One view may serve several rules; operation ids must still be unique.
            base, n = found["operationId"], 1
            while found["operationId"] in seen:
                n += 1
                found["operationId"] = f"{base}_{n}"
            seen.add(found["operationId"])
            paths.setdefault(path, {})[method.lower()] = found
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Errors are always JSON `{error, code}` with an optional `details`.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A Supabase access token, a Conveyor backend token from "
                    "`POST /api/auth/exchange-token`, or a service token.",
                }
            },
        },
    }
