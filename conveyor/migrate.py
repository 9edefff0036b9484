"""Apply `sql/` migrations in order, each in its own transaction, recording what ran."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from conveyor.errors import ConveyorError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# An unreachable server fails `conveyor migrate` (and start-up) instead of hanging it.
CONNECT_TIMEOUT_SECONDS = 5
# Supabase CLI naming: <14-digit timestamp>_<name>.sql
MIGRATION_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_KEY = 0x636F6E76  # "conv"


class MigrationError(ConveyorError):
    """A migration failed; nothing of it was applied."""

    code = "MIGRATION_FAILED"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        """The file's SQL text."""
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to notice an applied migration that was edited afterwards."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migrations under sql_dir, in version order; a misnamed .sql file is an error."""
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name} is not named YYYYMMDDHHMMSS_name.sql; rename it so it sorts in order"
            )
        migrations.append(Migration(match["version"], match["name"], path))
    return migrations


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations and return the versions applied (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(
        database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        # Web, worker and beat may all start at once; one of them migrates, the others wait.
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                """
                create table if not exists public.conveyor_migrations (
                  version text primary key,
                  name text not null,
                  checksum text not null,
                  applied_at timestamptz not null default now()
                )
                """
            )
            done = {
                row[0]: row[1]
                for row in conn.execute("select version, checksum from public.conveyor_migrations")
            }
            for migration in discover(sql_dir):
                if migration.version in done:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "insert into public.conveyor_migrations (version, name, checksum) "
                            "values (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.path.name} failed: {exc}", version=migration.version
                    ) from exc
                applied_now.append(migration.version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def pending(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Versions not yet applied to the database."""
    with psycopg.connect(database_url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        exists = conn.execute("select to_regclass('public.conveyor_migrations')").fetchone()
        done: set[str] = set()
        if exists and exists[0]:
            done = {
                row[0] for row in conn.execute("select version from public.conveyor_migrations")
            }
    return [m.version for m in discover(sql_dir) if m.version not in done]
