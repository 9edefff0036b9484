"""Accessors for the per-app resources that create_app wires in."""

from __future__ import annotations

from flask import current_app, g

from conveyor.auth.supabase_auth import AuthNotConfigured, SupabaseAuth
from conveyor.auth.tokens import Principal
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs.artifacts import ArtifactStore
from conveyor.settings import Settings
from web.enqueue import Enqueuer


def get_settings() -> Settings:
    """This app's settings."""
    settings: Settings = current_app.extensions["conveyor.settings"]
    return settings


def get_db() -> Database:
    """This app's database."""
    db: Database = current_app.extensions["conveyor.db"]
    return db


def get_publisher() -> EventPublisher:
    """This app's event publisher."""
    publisher: EventPublisher = current_app.extensions["conveyor.publisher"]
    return publisher


def get_enqueuer() -> Enqueuer:
    """This app's task publisher."""
    enqueuer: Enqueuer = current_app.extensions["conveyor.enqueuer"]
    return enqueuer


def get_store() -> ArtifactStore:
    """Where this app reads large outputs from."""
    store: ArtifactStore = current_app.extensions["conveyor.store"]
    return store


def get_principal() -> Principal:
    """The authenticated caller of this request."""
    principal: Principal = g.principal
    return principal


def supabase_auth() -> SupabaseAuth | None:
    """This app's Supabase Auth client, or None when SUPABASE_URL is not set."""
    auth: SupabaseAuth | None = current_app.extensions.get("conveyor.supabase_auth")
    return auth


def get_supabase_auth() -> SupabaseAuth:
    """This app's Supabase Auth client; AuthNotConfigured (503) without SUPABASE_URL."""
    auth = supabase_auth()
    if auth is None:
        raise AuthNotConfigured()
    return auth
