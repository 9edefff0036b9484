"""`conveyor doctor`'s check of what the `anon` role may do in schema `conveyor`."""

from __future__ import annotations

import psycopg

from conveyor.cli.doctor import Check, check_anon, check_user_deletion
from conveyor.ops.erasure import TRIGGER_SQL


def test_check_anon_says_so_and_skips_when_the_role_does_not_exist(database_url: str) -> None:
    checks = check_anon(database_url, role="conveyor_no_such_role")

    assert checks == [
        Check(
            "conveyor_no_such_role access",
            True,
            "role conveyor_no_such_role does not exist: not checked",
        )
    ]


def test_check_anon_reports_a_function_anon_may_execute_through_public(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(
            "create function conveyor.doctor_probe(n int) returns int language sql as 'select n'"
        )

    checks = check_anon(database_url)

    assert [c for c in checks if not c.ok] == [
        Check(
            "anon access",
            False,
            "anon holds EXECUTE on function conveyor.doctor_probe(n integer): revoke it",
        )
    ]


def test_check_anon_reports_a_column_granted_to_anon(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("grant update (status) on conveyor.workflow_runs to anon")

    checks = check_anon(database_url)

    assert [c for c in checks if not c.ok] == [
        Check(
            "anon access",
            False,
            "anon holds UPDATE on column conveyor.workflow_runs.status: revoke it",
        )
    ]


def test_check_user_deletion_passes_when_a_trigger_on_auth_users_forgets_deleted_users(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(TRIGGER_SQL)

    check = check_user_deletion(database_url)

    assert check == Check(
        "user deletion",
        True,
        "trigger conveyor_forget_deleted_user on auth.users forgets a deleted user's Conveyor rows",
    )


def test_check_user_deletion_warns_with_the_trigger_to_create_when_there_is_none(
    database_url: str,
) -> None:
    check = check_user_deletion(database_url)

    assert (check.ok, check.warn_only) == (False, True)
    assert check.detail.endswith(f"run once as postgres: {TRIGGER_SQL}")


def test_check_user_deletion_passes_saying_so_when_there_is_no_auth_users_table(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("drop table auth.users")

    check = check_user_deletion(database_url)

    assert check.ok
    assert check.detail.startswith("no auth.users table")
