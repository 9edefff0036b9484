"""Migrations apply in order, once, atomically, and never touch what Supabase owns."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conveyor.migrate import SQL_DIR, MigrationError, discover, migrate, pending
from tests.conftest import database_named


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A database with nothing in it."""
    name = f"conveyor_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield database_named(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def test_every_sql_file_follows_supabase_cli_naming() -> None:
    names = [m.path.name for m in discover()]
    assert names == sorted(p.name for p in SQL_DIR.glob("*.sql"))
    assert names


def test_rerunning_migrations_applies_nothing(database_url: str) -> None:
    assert migrate(database_url) == []
    assert pending(database_url) == []


def test_each_applied_migration_is_recorded(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        versions = [
            r[0] for r in conn.execute("select version from conveyor_migrations order by 1")
        ]
    assert versions == [m.version for m in discover()]


def test_shim_leaves_an_existing_supabase_auth_schema_alone(empty_database_url: str) -> None:
    """On a real Supabase project the auth schema exists: the shim adds or replaces nothing."""
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("create schema auth")
        # Supabase's own helpers (stand-ins that answer differently from the shim's).
        conn.execute(
            "create function auth.uid() returns uuid language sql stable "
            "as $$ select '00000000-0000-0000-0000-0000000000aa'::uuid $$"
        )
        conn.execute(
            "create function auth.jwt() returns jsonb language sql stable "
            "as $$ select '{}'::jsonb $$"
        )
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regclass('auth.users')").fetchone() == (None,)
        assert conn.execute("select auth.uid()::text").fetchone() == (
            "00000000-0000-0000-0000-0000000000aa",
        )


def test_auth_uid_reads_the_request_claims_like_supabase(database_url: str) -> None:
    user = str(uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (f'{{"sub": "{user}", "role": "authenticated"}}',),
        )
        assert conn.execute("select auth.uid()::text, auth.role()").fetchone() == (
            user,
            "authenticated",
        )


def test_a_misnamed_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "add_table.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match=r"YYYYMMDDHHMMSS_name\.sql"):
        discover(tmp_path)


def test_a_failing_migration_applies_nothing_of_itself(
    empty_database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "20260101000000_good.sql").write_text("create table good (id int);")
    (tmp_path / "20260101000100_bad.sql").write_text(
        "create table half (id int); select * from no_such_table;"
    )
    with pytest.raises(MigrationError, match=r"20260101000100_bad\.sql"):
        migrate(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute(
            "select to_regclass('good') is not null, to_regclass('half') is null"
        ).fetchone() == (True, True)
        assert pending(empty_database_url, tmp_path) == ["20260101000100"]
