"""`conveyor users forget USER_ID`, and the line `conveyor doctor` prints about user deletion."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from conveyor.ops.erasure import TRIGGER_SQL
from tests.acceptance.test_cli import base_env, conveyor, one_error_line
from tests.user_rows import FORGOTTEN_PER_TABLE, rows_of, seed_user


def test_users_forget_deletes_the_users_rows_and_prints_the_count_per_table(
    database_url: str, tmp_path: Path
) -> None:
    user = uuid.uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_user(conn, user)

    result = conveyor(
        "users", "forget", str(user), env=base_env(tmp_path, DATABASE_URL=database_url)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"forgot user {user}:"] + [
        f"  {table}: 1" for table in sorted(FORGOTTEN_PER_TABLE)
    ]
    with psycopg.connect(database_url) as conn:
        assert set(rows_of(conn, user).values()) == {0}


def test_users_forget_of_a_user_with_nothing_stored_says_so(
    database_url: str, tmp_path: Path
) -> None:
    user = uuid.uuid4()

    result = conveyor(
        "users", "forget", str(user), env=base_env(tmp_path, DATABASE_URL=database_url)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"forgot user {user}: nothing of theirs was stored\n"


def test_users_forget_with_a_malformed_user_id_fails_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    result = conveyor("users", "forget", "alice", env=base_env(tmp_path, DATABASE_URL=database_url))

    assert one_error_line(result) == (
        "Error: 'alice' is not a user id: expected a UUID, "
        "e.g. 00000000-0000-0000-0000-000000000000"
    )


def test_doctor_warns_with_the_trigger_to_create_and_still_exits_0(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    result = conveyor(
        "doctor", env=base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if "user deletion" in line]
    assert line.startswith("[warn] user deletion: ")
    assert line.endswith(TRIGGER_SQL)
