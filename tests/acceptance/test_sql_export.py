"""`conveyor sql --out DIR`: the migrations as Supabase CLI files, for `supabase db push`."""

from __future__ import annotations

from pathlib import Path

from conveyor.ops.migrations import discover
from tests.acceptance.test_cli import base_env, conveyor, one_error_line


def exported(folder: Path) -> dict[str, str]:
    """name -> text of each file in folder."""
    return {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}


def migration_files() -> dict[str, str]:
    """name -> text of each migration, as discover() reads them."""
    return {m.filename: m.sql for m in discover()}


def test_sql_out_writes_exactly_the_migration_files_with_their_content(tmp_path: Path) -> None:
    out = tmp_path / "migrations"
    out.mkdir()

    result = conveyor("sql", "--out", str(out), env=base_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert exported(out) == migration_files()


def test_sql_out_creates_a_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "project" / "supabase" / "migrations"

    result = conveyor("sql", "--out", str(out), env=base_env(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(exported(out)) == sorted(migration_files())


def test_sql_out_prints_each_file_written_then_how_to_apply_them(tmp_path: Path) -> None:
    out = tmp_path / "migrations"

    result = conveyor("sql", "--out", str(out), env=base_env(tmp_path))

    *written, closing = result.stdout.strip().splitlines()
    assert written == [f"wrote {out / name}" for name in sorted(migration_files())]
    assert "supabase db push" in closing


def test_sql_out_again_into_the_same_folder_succeeds_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "migrations"
    first = conveyor("sql", "--out", str(out), env=base_env(tmp_path))
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}

    again = conveyor("sql", "--out", str(out), env=base_env(tmp_path))

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    assert exported(out) == migration_files()
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before
    assert "wrote" not in again.stdout


def test_sql_out_refuses_a_same_named_file_with_other_content_and_writes_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "migrations"
    out.mkdir()
    first = discover()[0].filename
    (out / first).write_text("-- someone's edit\n", encoding="utf-8")

    result = conveyor("sql", "--out", str(out), env=base_env(tmp_path))

    line = one_error_line(result)
    assert first in line
    assert "different content" in line
    assert exported(out) == {first: "-- someone's edit\n"}


def test_sql_help_says_it_is_for_supabase_db_push(tmp_path: Path) -> None:
    result = conveyor("sql", "--help", env=base_env(tmp_path))

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # click wraps the help to the terminal
    assert "supabase db push" in text
    assert "--out" in text
