"""Where the CLI's Postgres and Redis are (the configured ones, or embedded ones it starts and
stops), the check that a database is migrated, and how a command fails: one line, exit 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
import psycopg

from conveyor.cli.services import EmbeddedPostgres, EmbeddedRedis
from conveyor.errors import ConveyorError
from conveyor.ops.migrations import pending
from conveyor.settings import Settings


@dataclass(frozen=True)
class ServiceURLs:
    """Where Postgres and Redis are, embedded or not."""

    database_url: str
    redis_url: str


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield DATABASE_URL, or the URL of an embedded PostgreSQL started (and stopped) here."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    postgres = EmbeddedPostgres(settings.data_dir.resolve() / "postgres")
    url = postgres.start()
    click.echo(f"embedded PostgreSQL 16, data in {postgres.data_dir}")
    try:
        yield url
    finally:
        postgres.stop()


class CommandFailed(click.ClickException):
    """A command cannot go on (its database is not migrated, unreachable or refused a
    statement, or a file is in the way): click prints `Error: <message>` on stderr, exit 2."""

    exit_code = 2


def one_line(exc: Exception) -> str:
    """An error's message on one line: a server error's primary message (without its LINE/^
    pointer), else the text joined (psycopg's connection errors span several lines)."""
    if isinstance(exc, ConveyorError):
        text = exc.message
    elif isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def require_migrated(url: str, *, unreachable_ok: bool = False) -> None:
    """Exit 2 saying to run `conveyor migrate` unless every migration is applied at url: the one
    check before every command that needs Conveyor's schema. An unreachable server exits 2 too,
    in one line, unless unreachable_ok (the command then reports it in its own words)."""
    try:
        todo = pending(url)
    except psycopg.OperationalError as exc:
        if unreachable_ok:
            return
        raise CommandFailed(f"cannot reach the database: {one_line(exc)}") from exc
    if todo:
        raise CommandFailed(
            f"the database is not migrated ({len(todo)} migration(s) pending): "
            "run `conveyor migrate` first"
        )


@contextmanager
def migrated_database(settings: Settings, *, unreachable_ok: bool = False) -> Iterator[str]:
    """database(settings), once require_migrated has passed there."""
    with database(settings) as url:
        require_migrated(url, unreachable_ok=unreachable_ok)
        yield url


@contextmanager
def redis_server(settings: Settings) -> Iterator[str]:
    """Yield REDIS_URL, or the URL of an embedded Redis started (and stopped) here."""
    if settings.redis_url is not None:
        yield settings.redis_url
        return
    redis = EmbeddedRedis(settings.data_dir.resolve() / "redis")
    url = redis.start()
    click.echo(f"embedded Redis at {url}, data in {redis.data_dir}")
    try:
        yield url
    finally:
        redis.stop()


@contextmanager
def backing_services(settings: Settings) -> Iterator[ServiceURLs]:
    """Both services, embedded where not configured."""
    with database(settings) as database_url, redis_server(settings) as redis_url:
        yield ServiceURLs(database_url, redis_url)
