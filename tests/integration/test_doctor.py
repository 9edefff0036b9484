"""`conveyor doctor`'s check of what the `anon` role may do in schema `conveyor`."""

from __future__ import annotations

import psycopg

from conveyor.doctor import Check, check_anon


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
