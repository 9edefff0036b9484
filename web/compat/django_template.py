"""Seed 003 (the Django + Supabase template): its paths with their trailing slash, its list shapes
and field names, its per-day tier limits and per-path credits, calling the same domain code as
Conveyor's own API. The views are in `django_auth`, `django_users` and `django_credits`; this
blueprint holds them, answers their errors with Django REST framework's `detail`, and admits each
request (the day's limit, then the path's credits) before its view runs."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState

from conveyor.auth.daily_limits import Counted, DailyLimits
from conveyor.auth.tokens import Principal
from conveyor.errors import ConveyorError, InsufficientCredits, RateLimited
from conveyor.ledger import endpoint_rates
from conveyor.settings import Settings
from web.compat import django_auth, django_credits, django_users, fastapi_errors
from web.context import get_db, get_settings
from web.errors import handle_conveyor_error
from web.limits import REDIS_TIMEOUT_SECONDS, anonymous_caller

LIMITS = "conveyor.django_daily_limits"
# The document's bodies for its two refusals; other errors carry their message as `detail`.
DETAILS: tuple[tuple[type[ConveyorError], str], ...] = (
    (RateLimited, "Request limit exceeded. Try again later."),
    (InsufficientCredits, "Insufficient credits for this operation."),
)


bp = Blueprint("django_template", __name__)


def django_error(exc: ConveyorError) -> tuple[Response, int]:
    """Our error with DRF's `detail` beside `{error, code}` (400s stay 400, as DRF answers)."""
    response, status = handle_conveyor_error(exc)
    detail = next((text for kind, text in DETAILS if isinstance(exc, kind)), None)
    return fastapi_errors.with_detail(response, detail), status


fastapi_errors.install(bp, django_error)


@bp.record_once
def start_counting(state: BlueprintSetupState) -> None:
    """The app's daily request counter, on the app's Redis."""
    settings: Settings = state.app.extensions["conveyor.settings"]
    assert settings.redis_url is not None
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    state.app.extensions[LIMITS] = DailyLimits(client)


def daily_limits() -> DailyLimits:
    """This app's daily request counter."""
    limits: DailyLimits = current_app.extensions[LIMITS]
    return limits


def count_anonymous(limits: DailyLimits) -> None:
    """A caller without a token (register, login) is counted per client address, as the
    per-minute limit of web/limits.py counts it."""
    requests = get_settings().anonymous_daily_api_requests
    caller = anonymous_caller()
    if requests == 0 or caller is None:
        return
    limits.hit(caller, requests)


def charge(principal: Principal, limits: DailyLimits, counted: Counted | None) -> None:
    """Take the request path's credits; refused, the request is neither charged nor counted."""
    assert principal.user_id is not None
    try:
        charged = endpoint_rates.charge_request(get_db(), principal.user_id, request.path)
    except Exception:
        limits.give_back(counted)
        raise
    if charged is not None and not charged[1].applied:
        limits.give_back(counted)
        credits, move = charged
        raise InsufficientCredits(
            f"A request to {request.path} costs {credits} credit(s) and your balance is "
            f"{move.balance}; top up credits to continue.",
            required=credits,
            balance=move.balance,
        )


@bp.before_request
def admit() -> None:
    """Count the request against its caller's day (429 past the plan's limit, Retry-After until
    midnight UTC), then take its path's credits (403, nothing taken): before the view runs."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None or getattr(view, "conveyor_uncounted", False):
        return
    limits = daily_limits()
    principal: Principal | None = g.get("principal")
    if principal is None:
        count_anonymous(limits)
        return
    if principal.user_id is None:
        return  # a service token: every view here refuses it
    user = principal.user_id
    counted = limits.hit(f"user:{user}", endpoint_rates.daily_api_request_limit(get_db(), user))
    charge(principal, limits, counted)


bp.register_blueprint(django_auth.bp)
bp.register_blueprint(django_users.bp)
bp.register_blueprint(django_credits.bp)
