"""The `conveyor` commands that read Conveyor's schema, on a database that does not have it (or
cannot be reached, or fails a statement): one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from conveyor.cli.services import free_port
from conveyor.ops.migrations import discover
from tests.acceptance.test_cli import base_env, conveyor, one_error_line

# Every subcommand that reads or writes Conveyor's schema (migrate, doctor, run and sql do not
# need it: they create it, report on it or only read the files).
SCHEMA_COMMANDS = {
    "status": ["status"],
    "maintenance list": ["maintenance", "list"],
    "maintenance run": ["maintenance", "run", "usage_rollup"],
    "submit": ["submit", "echo"],
    "users forget": ["users", "forget", "00000000-0000-4000-8000-000000000001"],
}


def dead_database_url() -> str:
    """A Postgres URL on a loopback port nothing listens on."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/conveyor"


@pytest.mark.parametrize("args", SCHEMA_COMMANDS.values(), ids=SCHEMA_COMMANDS.keys())
def test_a_command_needing_the_schema_on_an_unmigrated_database_exits_2_saying_run_conveyor_migrate(
    args: list[str], empty_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path, DATABASE_URL=empty_database_url, REDIS_URL=redis_url)

    result = conveyor(*args, env=env)

    line = one_error_line(result)
    assert "not migrated" in line
    assert f"{len(discover())} migration(s) pending" in line
    assert "run `conveyor migrate`" in line


def test_submit_to_an_explicit_url_does_not_judge_the_local_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    env = base_env(tmp_path, DATABASE_URL=empty_database_url)

    result = conveyor("submit", "echo", "--url", api, env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot reach {api}" in result.stderr
    assert "not migrated" not in result.stderr


def test_maintenance_on_an_unreachable_database_fails_in_one_line_with_exit_2(
    tmp_path: Path,
) -> None:
    result = conveyor(
        "maintenance", "list", env=base_env(tmp_path, DATABASE_URL=dead_database_url())
    )

    line = one_error_line(result)
    assert line.startswith("Error: cannot reach the database: ")


def test_status_on_an_unreachable_database_still_reports_it_with_exit_1(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path, DATABASE_URL=dead_database_url(), REDIS_URL=redis_url)

    result = conveyor("status", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "Runs and maintenance: unknown: The database is unreachable" in result.stdout


def test_migrate_on_an_unreachable_database_fails_in_one_line_with_exit_2(tmp_path: Path) -> None:
    result = conveyor("migrate", env=base_env(tmp_path, DATABASE_URL=dead_database_url()))

    line = one_error_line(result)
    assert line.startswith("Error: database error: connection failed")


def test_a_database_error_inside_a_command_is_one_line_with_exit_2(
    database_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop table conveyor.maintenance_runs cascade")

    result = conveyor("maintenance", "list", env=base_env(tmp_path, DATABASE_URL=database_url))

    line = one_error_line(result)
    assert line.startswith("Error: database error: relation ")
    assert line.endswith('maintenance_runs" does not exist')
