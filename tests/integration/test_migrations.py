"""Migrations apply in order, once, atomically, into Conveyor's own schema, and never touch what
Supabase or the host app owns."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from conveyor.db import sql_connection
from conveyor.ops.migrations import MigrationError, discover, migrate, pending

CHECKOUT = Path(__file__).resolve().parents[2]
# What a wheel is built from: the package folders and the files pyproject.toml reads.
WHEEL_SOURCES = ("conveyor", "sql", "web", "worker", "tasks", "beat_schedule.py", "pyproject.toml")


def folder_of_migrations(tmp_path: Path) -> Path:
    """A folder of migrations that starts, like sql/, with the file creating Conveyor's schema
    and its migration record."""
    (tmp_path / "20250101000000_schema.sql").write_text(discover()[0].sql)
    return tmp_path


def public_objects(url: str) -> set[tuple[str, str]]:
    """(kind, name) of every relation, function and type in schema public."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            select 'relation', relname from pg_class
             where relnamespace = 'public'::regnamespace
            union all
            select 'function', proname from pg_proc where pronamespace = 'public'::regnamespace
            union all
            select 'type', typname from pg_type where typnamespace = 'public'::regnamespace
            """
        ).fetchall()
    return {(str(kind), str(name)) for kind, name in rows}


def test_every_sql_file_follows_supabase_cli_naming() -> None:
    names = [m.filename for m in discover()]
    assert names == sorted(p.name for p in (CHECKOUT / "sql").glob("*.sql"))
    assert names


def test_rerunning_migrations_applies_nothing(database_url: str) -> None:
    assert migrate(database_url) == []
    assert pending(database_url) == []


def test_each_applied_migration_is_recorded_in_conveyors_schema(database_url: str) -> None:
    with sql_connection(database_url) as conn:
        versions = [
            r[0] for r in conn.execute("select version from conveyor.schema_migrations order by 1")
        ]
    assert versions == [m.version for m in discover()]


def test_a_fresh_install_creates_nothing_in_public(empty_database_url: str) -> None:
    before = public_objects(empty_database_url)
    migrate(empty_database_url)
    assert public_objects(empty_database_url) == before


def test_every_pending_migration_is_listed_on_a_database_never_migrated(
    empty_database_url: str,
) -> None:
    assert pending(empty_database_url) == [m.version for m in discover()]


def test_shim_leaves_an_existing_supabase_auth_schema_alone(empty_database_url: str) -> None:
    """On a real Supabase project the auth schema exists: the shim replaces nothing in it and
    creates only a helper that is missing."""
    with sql_connection(empty_database_url) as conn:
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
    with sql_connection(empty_database_url) as conn:
        assert conn.execute("select to_regclass('auth.users')").fetchone() == (None,)
        assert conn.execute("select auth.uid()::text, auth.jwt()").fetchone() == (
            "00000000-0000-0000-0000-0000000000aa",
            {},
        )
        assert conn.execute("select to_regprocedure('auth.role()') is not null").fetchone() == (
            True,
        )


def test_auth_uid_reads_the_request_claims_like_supabase(database_url: str) -> None:
    user = str(uuid.uuid4())
    with sql_connection(database_url) as conn:
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
    tmp_path = folder_of_migrations(tmp_path)
    (tmp_path / "20260101000000_good.sql").write_text("create table good (id int);")
    (tmp_path / "20260101000100_bad.sql").write_text(
        "create table half (id int); select * from no_such_table;"
    )
    with pytest.raises(MigrationError, match=r"20260101000100_bad\.sql"):
        migrate(empty_database_url, tmp_path)
    with sql_connection(empty_database_url) as conn:
        assert conn.execute(
            "select to_regclass('conveyor.good') is not null, to_regclass('conveyor.half') is null"
        ).fetchone() == (True, True)
        assert pending(empty_database_url, tmp_path) == ["20260101000100"]


def test_an_object_a_migration_names_plainly_lands_in_conveyors_schema(
    empty_database_url: str, tmp_path: Path
) -> None:
    tmp_path = folder_of_migrations(tmp_path)
    (tmp_path / "20260101000000_plain.sql").write_text("create table plain (id int);")
    migrate(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute(
            "select to_regclass('conveyor.plain') is not null, to_regclass('public.plain') is null"
        ).fetchone() == (True, True)


def test_an_applied_migration_whose_file_changed_is_refused(
    empty_database_url: str, tmp_path: Path
) -> None:
    tmp_path = folder_of_migrations(tmp_path)
    migration = tmp_path / "20260101000000_table.sql"
    migration.write_text("create table edited (id int);")
    migrate(empty_database_url, tmp_path)
    migration.write_text("create table edited (id int, more text);")
    (tmp_path / "20260101000100_later.sql").write_text("create table later (id int);")

    with pytest.raises(MigrationError, match=r"20260101000000_table\.sql was applied with diff"):
        migrate(empty_database_url, tmp_path)
    with sql_connection(empty_database_url) as conn:
        assert conn.execute("select to_regclass('conveyor.later')").fetchone() == (None,)


def test_a_pre_release_database_is_refused_with_how_to_reset_it(
    empty_database_url: str,
) -> None:
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("create table public.conveyor_migrations (version text primary key)")
    with pytest.raises(MigrationError, match=r"pre-release.*drop it and create it again"):
        migrate(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("select to_regnamespace('conveyor')").fetchone() == (None,)


def test_files_pushed_by_the_supabase_cli_apply_on_their_own_and_count_as_applied(
    empty_database_url: str,
) -> None:
    """`conveyor sql --out` + `supabase db push`: each file in its own transaction on a plain
    session (no search_path of Conveyor's), recorded in the Supabase CLI's table."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("create schema supabase_migrations")
        conn.execute(
            "create table supabase_migrations.schema_migrations "
            "(version text primary key, statements text[], name text)"
        )
        for migration in discover():
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "insert into supabase_migrations.schema_migrations (version, name) "
                    "values (%s, %s)",
                    (migration.version, migration.name),
                )
    assert pending(empty_database_url) == []
    assert migrate(empty_database_url) == []
    with sql_connection(empty_database_url) as conn:
        recorded = [r[0] for r in conn.execute("select version from schema_migrations order by 1")]
    assert recorded == [m.version for m in discover()]


def test_an_installed_wheel_carries_its_sql_and_migrates_a_fresh_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        origin = CHECKOUT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    (source / "README.md").write_text("Conveyor\n")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, source],
        check=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("conveyor-*.whl")
    installed = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-t", installed, wheel],
        check=True,
        timeout=120,
    )
    # Run from an empty folder, the installed copy first on the path: the checkout's sql/ is
    # nowhere in reach.
    script = (
        "import sys, conveyor.ops.migrations as m; "
        "assert m.__file__.startswith(sys.argv[2]), m.__file__; "
        "print(len(m.migrate(sys.argv[1])))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    applied = subprocess.run(
        [sys.executable, "-c", script, empty_database_url, str(installed)],
        cwd=elsewhere,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(applied.stdout.strip()) == len(discover())
    assert pending(empty_database_url) == []
