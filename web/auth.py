"""Every `/api` route needs a verified bearer token unless its view is marked `@public`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, g, request

from conveyor.auth import bearer_token, verify_token
from web.context import get_settings

View = TypeVar("View", bound=Callable[..., object])


def public(view: View) -> View:
    """Mark a view as reachable without a token."""
    view.conveyor_public = True  # type: ignore[attr-defined]
    return view


def authenticate() -> None:
    """Before each request: verify the bearer token and put the Principal on `g`."""
    if not request.path.startswith("/api"):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or getattr(view, "conveyor_public", False):
        return  # unknown routes fall through to the JSON 404
    settings = get_settings()
    g.principal = verify_token(
        bearer_token(request.headers.get("Authorization")),
        secret=settings.jwt_secret(),
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
    )


def init_app(app: Flask) -> None:
    """Install the authentication hook."""
    app.before_request(authenticate)
