"""Forgetting users in a Supabase-shaped project: the host's trigger on auth.users, fired by
Supabase Auth's own role, takes the user's Conveyor rows; the host's tables are not Conveyor's to
touch; the API roles cannot call the purge."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from conveyor.cli.doctor import check_user_deletion
from conveyor.ops.erasure import TRIGGER_SQL
from conveyor.ops.migrations import migrate
from tests.user_rows import rows_of, seed_user

if TYPE_CHECKING:
    from tests.supabase_like import SupabaseDatabase

# The fixtures supabase_cluster and supabase_db; a plugin, so pytest imports (and rewrites) it.
pytest_plugins = ("tests.supabase_like",)

HOST_ROWS_SQL = """
select 'profiles', to_jsonb(p)::text from public.profiles p
union all select 'user_roles', to_jsonb(r)::text from public.user_roles r
union all select 'notifications', to_jsonb(n)::text from public.notifications n
order by 1, 2
"""


@pytest.fixture
def project(supabase_db: SupabaseDatabase) -> SupabaseDatabase:
    """A Supabase-shaped project with Conveyor installed as postgres."""
    migrate(supabase_db.postgres_url)
    return supabase_db


@pytest.fixture
def superuser(project: SupabaseDatabase) -> Iterator[psycopg.Connection[Any]]:
    """The project as supabase_admin, autocommit: seeds and reads Conveyor's rows."""
    with psycopg.connect(project.admin_url, autocommit=True) as conn:
        yield conn


def create_host_trigger(project: SupabaseDatabase) -> None:
    """What the host runs once, in the SQL editor, as postgres."""
    with psycopg.connect(project.postgres_url, autocommit=True) as conn:
        conn.execute(TRIGGER_SQL)


def test_deleting_a_user_as_supabase_auth_admin_forgets_their_conveyor_rows(
    project: SupabaseDatabase, superuser: psycopg.Connection[Any]
) -> None:
    alice, bob = project.users["alice"], project.users["bob"]
    seed_user(superuser, alice)
    seed_user(superuser, bob)
    create_host_trigger(project)

    with psycopg.connect(project.auth_admin_url, autocommit=True) as auth:
        auth.execute("delete from auth.users where id = %s", (alice,))

    assert set(rows_of(superuser, alice).values()) == {0}
    assert 0 not in rows_of(superuser, bob).values()


def test_forgetting_a_user_leaves_the_host_apps_tables_as_they_were(
    project: SupabaseDatabase, superuser: psycopg.Connection[Any]
) -> None:
    alice = project.users["alice"]
    seed_user(superuser, alice)
    before = superuser.execute(HOST_ROWS_SQL).fetchall()

    with project.as_role("service_role") as conn:
        conn.execute("select conveyor.forget_user(%s)", (alice,))
        conn.commit()

    assert superuser.execute(HOST_ROWS_SQL).fetchall() == before
    assert set(rows_of(superuser, alice).values()) == {0}


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_the_api_roles_cannot_execute_forget_user(project: SupabaseDatabase, role: str) -> None:
    alice = project.users["alice"]
    with (
        project.as_role(role, alice) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("select conveyor.forget_user(%s)", (alice,))


def test_doctor_finds_the_trigger_the_host_created(project: SupabaseDatabase) -> None:
    create_host_trigger(project)

    check = check_user_deletion(project.postgres_url)

    assert check.ok, check.detail
    assert "conveyor_forget_deleted_user" in check.detail


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_no_api_role_may_execute_the_trigger_function(
    superuser: psycopg.Connection[Any], role: str
) -> None:
    assert superuser.execute(
        "select has_function_privilege(%s, 'conveyor.forget_deleted_auth_user()', 'EXECUTE')",
        (role,),
    ).fetchone() == (False,)
