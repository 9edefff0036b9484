"""Every web and worker statement has a deadline: one running past
DATABASE_STATEMENT_TIMEOUT_SECONDS is cancelled by Postgres and reported as ServiceUnavailable
(503 / retry), never left to hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.settings import Settings
from tests.support import close_worker_resources, make_settings
from web import create_app
from worker.base import resources_for
from worker.celery_app import create_celery


@pytest.fixture
def quick_db(database_url: str) -> Iterator[Database]:
    """A pool whose statements may run a fifth of a second."""
    database = Database(database_url, max_size=1, statement_timeout_seconds=0.2)
    yield database
    database.close()


def statement_timeout(db: Database) -> str:
    """The session's statement_timeout as Postgres reports it."""
    with db.connection() as conn:
        row = conn.execute("show statement_timeout").fetchone()
    assert row is not None
    return str(row["statement_timeout"])


def test_a_statement_running_past_the_timeout_is_cancelled_as_service_unavailable(
    quick_db: Database,
) -> None:
    started = time.monotonic()
    with (
        pytest.raises(ServiceUnavailable, match="statement timeout"),
        quick_db.transaction() as conn,
    ):
        conn.execute("select pg_sleep(10)")

    assert time.monotonic() - started < 5


def test_the_pool_serves_the_next_statement_after_a_timeout(quick_db: Database) -> None:
    with pytest.raises(ServiceUnavailable), quick_db.transaction() as conn:
        conn.execute("select pg_sleep(10)")

    with quick_db.transaction() as conn:
        row = conn.execute("select 1 as one").fetchone()

    assert row == {"one": 1}


def test_a_timeout_of_zero_sets_none(database_url: str) -> None:
    db = Database(database_url, max_size=1, statement_timeout_seconds=0)
    try:
        assert statement_timeout(db) == "0"
    finally:
        db.close()


@pytest.fixture
def seven_seconds(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings with a statement timeout of seven seconds."""
    return make_settings(
        database_url, redis_url, tmp_path / "data", database_statement_timeout_seconds=7
    )


def web_statement_timeout(settings: Settings) -> str:
    """The statement_timeout of the web app's pool for settings."""
    db: Database = create_app(settings).extensions["conveyor.db"]
    try:
        return statement_timeout(db)
    finally:
        db.close()


def test_the_web_pool_uses_the_configured_timeout(seven_seconds: Settings) -> None:
    assert web_statement_timeout(seven_seconds) == "7s"


def test_the_worker_pool_uses_the_configured_timeout(seven_seconds: Settings) -> None:
    app = create_celery(seven_seconds)
    try:
        assert statement_timeout(resources_for(app).db) == "7s"
    finally:
        close_worker_resources(app)


def test_the_default_timeout_is_a_minute(database_url: str, redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, redis_url, tmp_path / "data")

    assert web_statement_timeout(settings) == "1min"


def test_options_in_the_database_url_are_kept_beside_the_timeout(database_url: str) -> None:
    url = make_conninfo(database_url, options="-c application_name=kept")
    db = Database(url, statement_timeout_seconds=7)
    try:
        with db.connection() as conn:
            row = conn.execute(
                "select current_setting('application_name') as name, "
                "current_setting('statement_timeout') as timeout"
            ).fetchone()
    finally:
        db.close()

    assert row == {"name": "kept", "timeout": "7s"}


def test_a_statement_timeout_in_the_database_url_wins(database_url: str) -> None:
    url = make_conninfo(database_url, options="-c statement_timeout=3000")
    db = Database(url, statement_timeout_seconds=7)
    try:
        assert statement_timeout(db) == "3s"
    finally:
        db.close()
