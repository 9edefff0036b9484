"""`conveyor migrate` and `conveyor doctor` with Supabase Storage configured (a loopback server
speaking its API): the artifact bucket is created private, checked, and an outage is one line."""

from __future__ import annotations

from pathlib import Path

from conveyor.cli.services import free_port
from conveyor.ops.migrations import discover
from tests.acceptance.test_cli import base_env, conveyor, one_error_line
from tests.conftest import STORAGE_SERVICE_KEY
from tests.fake_storage import StorageServer

BUCKET = "conveyor-artifacts"


def storage_env(tmp_path: Path, supabase_url: str, **values: str) -> dict[str, str]:
    return base_env(
        tmp_path,
        SUPABASE_URL=supabase_url,
        SUPABASE_SERVICE_ROLE_KEY=STORAGE_SERVICE_KEY,
        **values,
    )


def storage_line(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if "] storage:" in line]
    return line


def test_migrate_creates_the_artifact_bucket_private(
    database_url: str, storage: StorageServer, tmp_path: Path
) -> None:
    storage.buckets.clear()

    result = conveyor("migrate", env=storage_env(tmp_path, storage.url, DATABASE_URL=database_url))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"created private bucket {BUCKET!r}" in result.stdout
    assert storage.buckets[BUCKET].public is False


def test_migrate_says_the_bucket_exists_the_second_time(
    database_url: str, storage: StorageServer, tmp_path: Path
) -> None:
    result = conveyor("migrate", env=storage_env(tmp_path, storage.url, DATABASE_URL=database_url))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bucket {BUCKET!r} exists" in result.stdout


def test_migrate_with_storage_unreachable_applies_the_sql_and_fails_in_one_line(
    empty_database_url: str, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    result = conveyor("migrate", env=storage_env(tmp_path, dead, DATABASE_URL=empty_database_url))

    assert f"applied {len(discover())} migration(s)" in result.stdout
    assert "Supabase Storage unreachable (read the bucket)" in one_error_line(result)


def test_doctor_reports_a_private_bucket(
    database_url: str, redis_url: str, storage: StorageServer, tmp_path: Path
) -> None:
    env = storage_env(tmp_path, storage.url, DATABASE_URL=database_url, REDIS_URL=redis_url)

    result = conveyor("doctor", env=env)

    assert storage_line(result.stdout) == (
        f"[ok ] storage: Supabase Storage bucket {BUCKET!r} exists, private"
    )


def test_doctor_fails_on_a_missing_bucket_saying_to_run_migrate(
    database_url: str, redis_url: str, storage: StorageServer, tmp_path: Path
) -> None:
    storage.buckets.clear()
    env = storage_env(tmp_path, storage.url, DATABASE_URL=database_url, REDIS_URL=redis_url)

    result = conveyor("doctor", env=env)

    assert result.returncode == 1
    assert storage_line(result.stdout) == (
        f"[FAIL] storage: bucket {BUCKET!r} missing: run `conveyor migrate`"
    )


def test_doctor_fails_on_a_public_bucket(
    database_url: str, redis_url: str, storage: StorageServer, tmp_path: Path
) -> None:
    storage.create_bucket(BUCKET, public=True)
    env = storage_env(tmp_path, storage.url, DATABASE_URL=database_url, REDIS_URL=redis_url)

    result = conveyor("doctor", env=env)

    assert result.returncode == 1
    assert "is public: anyone with an object's URL reads step outputs" in storage_line(
        result.stdout
    )


def test_doctor_names_the_local_folder_without_supabase_storage(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)

    result = conveyor("doctor", env=env)

    assert storage_line(result.stdout).startswith("[ok ] storage: SUPABASE_URL or ")
    assert f"{tmp_path / 'data'}/artifacts" in storage_line(result.stdout)
