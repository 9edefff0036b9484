"""Apply the `sql/` migrations in order, each in its own transaction, recording what ran."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg

from conveyor.constants import SCHEMA
from conveyor.db import sql_connection
from conveyor.errors import ConveyorError

# The top-level sql/ folder, carried in the wheel as the package data of `conveyor.sql`
# (pyproject's package-dir), so an installed Conveyor migrates as a checkout does.
SQL_PACKAGE = "conveyor.sql"
# Supabase CLI naming: <14-digit timestamp>_<name>.sql
MIGRATION_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 0x636F6E76  # "conv"
PRE_RELEASE_RECORD = "public.conveyor_migrations"
# Where the Supabase CLI records the migrations `supabase db push` applied.
SUPABASE_RECORD = "supabase_migrations.schema_migrations"


class MigrationError(ConveyorError):
    """A migration failed or cannot run; nothing of the failing file was applied."""

    code = "MIGRATION_FAILED"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    file: Traversable

    @property
    def filename(self) -> str:
        """The file's name, `<version>_<name>.sql`."""
        return self.file.name

    @property
    def sql(self) -> str:
        """The file's SQL text."""
        return self.file.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to notice an applied migration that was edited afterwards."""
        return hashlib.sha256(self.file.read_bytes()).hexdigest()


def sql_files() -> Traversable:
    """The folder of migration files, from the checkout or the installed package."""
    return resources.files(SQL_PACKAGE)


def discover(sql_dir: Traversable | None = None) -> list[Migration]:
    """The migrations under sql_dir, in version order; a misnamed .sql file is an error."""
    folder = sql_dir if sql_dir is not None else sql_files()
    migrations = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"{entry.name} is not named YYYYMMDDHHMMSS_name.sql; rename it so it sorts in order"
            )
        migrations.append(Migration(match["version"], match["name"], entry))
    return migrations


def refuse_pre_release_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse a database migrated by a pre-release Conveyor, whose tables are in `public`."""
    row = conn.execute("select to_regclass(%s) is not null", (PRE_RELEASE_RECORD,)).fetchone()
    if row and row[0]:
        raise MigrationError(
            f"this database holds a pre-release Conveyor schema in `public` "
            f"({PRE_RELEASE_RECORD} exists); Conveyor now keeps everything in schema "
            f"`{SCHEMA}` and cannot migrate that one forward. For a development database, drop it "
            "and create it again (for `conveyor run`'s embedded Postgres, stop Conveyor and delete "
            "the `pg` folder under CONVEYOR_DATA_DIR, `.conveyor/` by default); where an app "
            "shares the database, drop only Conveyor's pre-release objects from `public` (listed "
            "in docs/operations.md, 'Upgrading from the pre-release layout'), never the "
            "database. Then run `conveyor migrate`."
        )


def applied_checksums(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """version -> checksum of what the database has applied (empty when never migrated)."""
    exists = conn.execute("select to_regclass('conveyor.schema_migrations') is not null").fetchone()
    if not (exists and exists[0]):
        return {}
    rows = conn.execute("select version, checksum from conveyor.schema_migrations")
    return {str(version): str(checksum) for version, checksum in rows}


def pushed_versions(conn: psycopg.Connection[Any], migrations: list[Migration]) -> set[str]:
    """Versions of migrations the Supabase CLI recorded as applied: `supabase db push` of the
    files `conveyor sql --out` wrote (Conveyor's own files, so they count as applied)."""
    row = conn.execute(f"select to_regclass('{SUPABASE_RECORD}') is not null").fetchone()
    if not (row and row[0]):
        return set()
    try:
        rows = conn.execute(f"select version, name from {SUPABASE_RECORD}").fetchall()  # noqa: S608
    except psycopg.errors.InsufficientPrivilege:
        return set()  # not ours to read: only `conveyor migrate`'s own record counts then
    # Version and name both: the host app's own migrations are recorded in the same table.
    recorded = {(str(version), str(name)) for version, name in rows}
    return {m.version for m in migrations if (m.version, m.name) in recorded}


def refuse_edited(migrations: list[Migration], done: dict[str, str]) -> None:
    """An applied migration must not change afterwards: later files are what change a schema."""
    for migration in migrations:
        stored = done.get(migration.version)
        if stored is not None and stored != migration.checksum:
            raise MigrationError(
                f"migration {migration.filename} was applied with different content (its "
                "checksum changed since); a released migration is never edited: undo the edit "
                "and put the change in a new file",
                version=migration.version,
            )


def record(conn: psycopg.Connection[Any], migration: Migration) -> None:
    """Note in Conveyor's record that a migration is applied."""
    conn.execute(
        "insert into conveyor.schema_migrations (version, name, checksum) values (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


def migrate(database_url: str, sql_dir: Traversable | None = None) -> list[str]:
    """Apply pending migrations and return the versions applied (empty when up to date)."""
    migrations = discover(sql_dir)
    applied_now: list[str] = []
    # search_path = conveyor: a file that names a new object plainly creates it in Conveyor's
    # schema, never in the host app's `public`.
    with sql_connection(database_url, autocommit=True) as conn:
        # Web, worker and beat may all start at once; one of them migrates, the others wait.
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            refuse_pre_release_schema(conn)
            done = applied_checksums(conn)
            refuse_edited(migrations, done)
            pushed = pushed_versions(conn, migrations)
            for migration in migrations:
                if migration.version in done:
                    continue
                if migration.version in pushed:
                    # Applied by `supabase db push`: adopted into Conveyor's record as it is now.
                    record(conn, migration)
                    continue
                try:
                    with conn.transaction():
                        # The first file creates the record table this insert writes to.
                        conn.execute(migration.sql.encode())
                        record(conn, migration)
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.filename} failed, and nothing of it was "
                        f"applied: {exc}",
                        version=migration.version,
                    ) from exc
                applied_now.append(migration.version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def pending(database_url: str, sql_dir: Traversable | None = None) -> list[str]:
    """Versions not yet applied to the database (every one where Conveyor was never installed)."""
    migrations = discover(sql_dir)
    with sql_connection(database_url, autocommit=True) as conn:
        done = applied_checksums(conn).keys() | pushed_versions(conn, migrations)
    return [m.version for m in migrations if m.version not in done]
