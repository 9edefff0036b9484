"""The Flask front: HTTP and websockets only. `create_app()` is the one wiring point."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from conveyor.auth.jwks import JwksCache
from conveyor.auth.supabase_auth import auth_for
from conveyor.auth.tokens import TokenVerifier
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.logs import configure_logging
from conveyor.runs.artifacts import store_for
from conveyor.settings import Settings, get_settings
from conveyor.workflows.catalog import load_catalog
from web import (
    admin,
    agents,
    analytics,
    api_docs,
    approvals,
    auth,
    credits,
    dashboard,
    errors,
    health,
    identity,
    limits,
    notifications,
    observability,
    ops,
    payments,
    run_items,
    run_signals,
    runs,
    schedules,
    sessions,
    usage,
    usage_ingest,
    webhook_endpoints,
    workflows,
    ws,
)
from web.compat import django_template, fastapi_tokens, witchcraft
from web.enqueue import Enqueuer


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for settings (default: from the environment)."""
    settings = settings or get_settings()
    if settings.database_url is None or settings.redis_url is None:
        raise RuntimeError(
            "DATABASE_URL and REDIS_URL must be set for the web app; "
            "`conveyor run` sets them when it starts embedded services"
        )
    configure_logging(settings)
    load_catalog(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if settings.trusted_proxy_hops:
        # request.remote_addr (and so client_ip() and the rate limit) becomes the client's address.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["conveyor.settings"] = settings
    app.extensions["conveyor.db"] = Database(
        settings.database_url,
        statement_timeout_seconds=settings.database_statement_timeout_seconds,
    )
    app.extensions["conveyor.publisher"] = EventPublisher(settings.redis_url)
    app.extensions["conveyor.enqueuer"] = Enqueuer(settings)
    app.extensions["conveyor.verifier"] = build_verifier(settings)
    app.extensions["conveyor.store"] = store_for(settings)
    app.extensions["conveyor.supabase_auth"] = auth_for(settings)

    broker_url = settings.celery_broker_url() or settings.redis_url
    observability.init_app(app, broker_url)
    errors.init_app(app)
    auth.init_app(app)
    limits.init_app(app, settings)  # after auth: it skips callers the auth hook verified
    app.register_blueprint(health.bp)
    app.register_blueprint(agents.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(run_signals.bp)
    app.register_blueprint(run_items.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(approvals.bp)
    app.register_blueprint(identity.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(credits.bp)
    app.register_blueprint(usage_ingest.bp)
    app.register_blueprint(payments.bp)
    app.register_blueprint(notifications.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(webhook_endpoints.bp)
    app.register_blueprint(witchcraft.bp)  # seed 000 (README, "Coming from")
    app.register_blueprint(django_template.bp)  # seed 003's trailing-slash API
    app.register_blueprint(fastapi_tokens.bp)  # seed 004's `/api/v1` (README, "Coming from")
    ops.init_app(app, settings.redis_url, broker_url)
    dashboard.init_app(app)
    ws.init_app(app, settings)
    api_docs.init_app(app)
    return app


def build_verifier(settings: Settings) -> TokenVerifier:
    """The token verifier for these settings (JWKS only when a URL is known)."""
    jwks_url = settings.jwks_url()
    jwks = (
        JwksCache(
            jwks_url, ttl=settings.jwks_cache_seconds, min_refetch=settings.jwks_min_refetch_seconds
        )
        if jwks_url
        else None
    )
    return TokenVerifier(
        supabase_secret=settings.supabase_hs256_secret(),
        api_secret=settings.api_secret(),
        jwks=jwks,
        audience=settings.jwt_audience,
        issuer=settings.supabase_jwt_issuer,
        leeway=settings.jwt_leeway_seconds,
    )
