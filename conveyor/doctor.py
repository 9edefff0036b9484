"""`conveyor doctor`: what is configured, what is reachable, what is missing."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import redis

from conveyor.migrate import pending
from conveyor.settings import Settings


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str


def check_postgres(url: str | None) -> list[Check]:
    """Is Postgres reachable, and are all migrations applied?"""
    if url is None:
        return [
            Check("postgres", True, "DATABASE_URL unset: `conveyor run` starts an embedded one")
        ]
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("show server_version").fetchone()
        todo = pending(url)
    except psycopg.Error as exc:
        return [Check("postgres", False, f"unreachable: {exc}".strip())]
    version = row[0] if row else "?"
    return [
        Check("postgres", True, f"reachable, server {version}"),
        Check(
            "migrations",
            not todo,
            "up to date" if not todo else f"{len(todo)} pending: run `conveyor migrate`",
        ),
    ]


def check_redis(url: str | None) -> Check:
    """Is Redis reachable?"""
    if url is None:
        return Check("redis", True, "REDIS_URL unset: `conveyor run` starts an embedded one")
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return Check("redis", False, f"unreachable: {exc}")
    finally:
        client.close()
    return Check("redis", True, f"reachable, server {version}")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    secret = (
        "SUPABASE_JWT_SECRET set"
        if settings.supabase_jwt_secret
        else f"development secret in {settings.data_dir}/jwt-secret (set SUPABASE_JWT_SECRET)"
    )
    return [
        Check("environment", True, settings.environment),
        *check_postgres(settings.database_url),
        check_redis(settings.redis_url),
        Check("jwt", True, secret),
        Check("timezone", True, settings.timezone),
        Check(
            "stripe",
            True,
            "configured" if settings.stripe_secret_key else "not configured (payments disabled)",
        ),
    ]
