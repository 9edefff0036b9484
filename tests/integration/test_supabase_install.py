"""Installing Conveyor into a Supabase project as the non-superuser `postgres`: everything lands in
schema `conveyor`, the host app is left exactly as it was, and the API roles get only their reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from conveyor.ops.migrations import discover, migrate

if TYPE_CHECKING:
    from tests.supabase_like import Snapshot, SupabaseCluster, SupabaseDatabase

# The fixtures supabase_cluster and supabase_db; a plugin, so pytest imports (and rewrites) it.
pytest_plugins = ("tests.supabase_like",)

Params = Sequence[Any] | Mapping[str, Any]

AUTHENTICATED_READS = frozenset(
    {
        "workflow_runs", "workflow_steps", "run_events", "user_roles", "tenants",
        "tenant_members", "audit_logs", "agent_sessions", "agent_messages", "plans",
        "user_accounts", "usage_periods", "usage_events", "credit_transactions", "credit_rates",
        "model_prices", "user_subscriptions", "stripe_payments", "notifications", "usage_daily",
        "webhook_events", "webhook_deliveries", "webhook_delivery_attempts", "profiles",
        "run_work_items", "schedules",
    }
)  # fmt: skip
UNREADABLE_TABLES = frozenset(
    {
        "stripe_events", "notification_counters", "maintenance_runs", "webhook_signing_secrets",
        "usage_batches", "runs_per_day", "schema_migrations",
    }
)  # fmt: skip
WEBHOOK_SECRETS = frozenset({"secret", "previous_secret"})
INTERNAL_FUNCTIONS = frozenset(
    {
        "conveyor_claim_run",
        "record_usage_batch",
        "conveyor_status_data",
        "claim_maintenance_run",
        "admit_run",
        "forget_user",
    }
)
OBJECT_KINDS = ("schema", "table", "column", "sequence", "function", "type")
HOST_COLUMNS = {
    "user_roles": [("user_id", "uuid"), ("app_role", "text")],
    "notifications": [
        ("id", "bigint"),
        ("profile_id", "uuid"),
        ("body", "text"),
        ("seen", "boolean"),
    ],
}

# (kind, name, privilege) for every privilege %(role)s holds on an object in schema conveyor.
# has_*_privilege counts grants to PUBLIC and through memberships, as the server's checks do.
PRIVILEGES_HELD = """
select 'schema', 'conveyor', p from unnest(array['USAGE', 'CREATE']) p
  where has_schema_privilege(%(role)s, 'conveyor', p)
union all
select 'table', relname, p from pg_class
  cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                          'TRIGGER']) p
  where relnamespace = 'conveyor'::regnamespace and relkind in ('r', 'p', 'v', 'm', 'f')
    and has_table_privilege(%(role)s, oid, p)
union all
select 'column', relname || '.' || attname, p from pg_class c
  join pg_attribute a on a.attrelid = c.oid
  cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p
  where relnamespace = 'conveyor'::regnamespace and relkind in ('r', 'p', 'v', 'm', 'f')
    and attnum > 0 and not attisdropped and has_column_privilege(%(role)s, c.oid, attnum, p)
union all
select 'sequence', relname, p from pg_class cross join unnest(array['USAGE', 'SELECT', 'UPDATE']) p
  where relnamespace = 'conveyor'::regnamespace and relkind = 'S'
    and has_sequence_privilege(%(role)s, oid, p)
union all
select 'function', proname, 'EXECUTE' from pg_proc
  where pronamespace = 'conveyor'::regnamespace and has_function_privilege(%(role)s, oid, 'EXECUTE')
union all
select 'type', typname, 'USAGE' from pg_type
  where typnamespace = 'conveyor'::regnamespace and has_type_privilege(%(role)s, oid, 'USAGE')
"""


@dataclass(frozen=True)
class Install:
    """A project with Conveyor installed once, and the host's catalog before and after."""

    db: SupabaseDatabase
    applied: list[str]
    host_before: Snapshot
    host_after: Snapshot

    def rows(self, query: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """All rows of one query, run as the superuser."""
        return rows(self.db.admin_url, query, params)

    def held(self, role: str, kind: str) -> set[tuple[str, str]]:
        """(name, privilege) that role holds on Conveyor's objects of one kind."""
        return {
            (name, privilege)
            for held_kind, name, privilege in self.rows(PRIVILEGES_HELD, {"role": role})
            if held_kind == kind
        }


@pytest.fixture(scope="module")
def installed(supabase_cluster: SupabaseCluster) -> Iterator[Install]:
    """One install, shared by this module's checks that only read it."""
    db = supabase_cluster.create_database()
    try:
        before = db.snapshot()
        applied = migrate(db.postgres_url)
        yield Install(db, applied, before, db.snapshot())
    finally:
        supabase_cluster.drop_database(db)


def rows(url: str, query: str, params: Params | None = None) -> list[tuple[Any, ...]]:
    """All rows of one query."""
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def changes(before: Snapshot, after: Snapshot) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Per catalog section, the rows that disappeared and the rows that appeared."""
    diff = {}
    for section in before.keys() | after.keys():
        old, new = set(before.get(section, [])), set(after.get(section, []))
        if old != new:
            diff[section] = {
                "removed": sorted(old - new, key=repr),
                "added": sorted(new - old, key=repr),
            }
    return diff


def public_objects(snapshot: Snapshot) -> set[tuple[str, str]]:
    """(kind, name) of every relation, function and type in schema public."""
    return (
        {("relation", r[1]) for r in snapshot["relations"] if r[0] == "public"}
        | {("function", f"{r[1]}({r[2]})") for r in snapshot["functions"] if r[0] == "public"}
        | {("type", r[1]) for r in snapshot["types"] if r[0] == "public"}
    )


def conveyor_catalog(db: SupabaseDatabase) -> Snapshot:
    """Conveyor's whole catalog, ACLs and policies included, and its migration record."""
    snapshot = db.snapshot(("conveyor",))
    snapshot["schema_migrations"] = rows(
        db.admin_url, "select * from conveyor.schema_migrations order by version"
    )
    return snapshot


# The install itself


def test_install_as_postgres_applies_every_migration_without_error(installed: Install) -> None:
    assert installed.applied
    assert installed.applied == [m.version for m in discover()]


def test_the_installing_role_is_not_a_superuser(supabase_db: SupabaseDatabase) -> None:
    assert rows(
        supabase_db.postgres_url,
        "select current_user, rolsuper, rolbypassrls, pg_has_role('authenticated', 'member') "
        "from pg_roles where rolname = current_user",
    ) == [("postgres", False, True, True)]


def test_the_project_has_supabases_default_privileges_in_public(
    supabase_db: SupabaseDatabase,
) -> None:
    granted = rows(
        supabase_db.admin_url,
        "select distinct defaclrole::regrole::text, defaclobjtype from pg_default_acl d "
        "cross join aclexplode(d.defaclacl) a "
        "where defaclnamespace = 'public'::regnamespace and a.grantee = 'anon'::regrole",
    )
    assert sorted(granted) == sorted(
        (owner, kind) for owner in ("postgres", "supabase_admin") for kind in "Sfr"
    )


# The host app is untouched


def test_host_objects_acls_and_default_privileges_are_unchanged(installed: Install) -> None:
    assert changes(installed.host_before, installed.host_after) == {}


def test_nothing_of_conveyors_is_created_in_public(installed: Install) -> None:
    before, after = public_objects(installed.host_before), public_objects(installed.host_after)
    assert after - before == set()
    assert before - after == set()


def test_anon_can_still_call_the_host_apps_rpc(installed: Install) -> None:
    with installed.db.as_role("anon") as conn:
        assert conn.execute("select public.get_public_stats()").fetchone() == (3,)


def test_authenticated_still_reads_only_their_own_profile(installed: Install) -> None:
    alice = installed.db.users["alice"]
    with installed.db.as_role("authenticated", alice) as conn:
        assert conn.execute("select id from public.profiles").fetchall() == [(alice,)]


def test_the_host_policy_calling_the_host_function_still_evaluates(installed: Install) -> None:
    with installed.db.as_role("authenticated", installed.db.users["carol"]) as conn:
        assert conn.execute("select count(*) from public.profiles").fetchone() == (3,)


def test_signing_up_still_runs_the_host_trigger(installed: Install) -> None:
    user = uuid.uuid4()
    with psycopg.connect(installed.db.admin_url) as conn:
        conn.execute("insert into auth.users (id, email) values (%s, 'new@example.com')", (user,))
        made = conn.execute("select count(*) from public.profiles where id = %s", (user,))
        assert made.fetchone() == (1,)
        conn.rollback()


@pytest.mark.parametrize("table", sorted(HOST_COLUMNS))
def test_the_hosts_tables_named_like_conveyors_are_still_the_hosts(
    installed: Install, table: str
) -> None:
    assert (
        installed.rows(
            "select column_name::text, data_type::text from information_schema.columns "
            "where table_schema = 'public' and table_name = %s order by ordinal_position",
            (table,),
        )
        == HOST_COLUMNS[table]
    )
    with installed.db.as_role("authenticated", installed.db.users["alice"]) as conn:
        query = sql.SQL("select count(*) from public.{}").format(sql.Identifier(table))
        assert conn.execute(query).fetchone() == (1,)


# anon holds nothing of Conveyor's


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_anon_holds_no_privilege_on_any_conveyor_object(installed: Install, kind: str) -> None:
    assert installed.held("anon", kind) == set()


def test_anon_reading_a_conveyor_table_is_denied(installed: Install) -> None:
    with (
        installed.db.as_role("anon") as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("select * from conveyor.workflow_runs")


# authenticated reads exactly what the web shows a user


def test_authenticated_may_use_but_not_create_in_schema_conveyor(installed: Install) -> None:
    assert installed.held("authenticated", "schema") == {("conveyor", "USAGE")}


def test_authenticated_selects_exactly_the_listed_tables(installed: Install) -> None:
    expected = {(table, "SELECT") for table in AUTHENTICATED_READS}
    assert installed.held("authenticated", "table") == expected


def test_authenticated_reads_webhook_endpoints_except_their_secrets(installed: Install) -> None:
    columns = {
        column
        for (column,) in installed.rows(
            "select attname::text from pg_attribute where attnum > 0 and not attisdropped "
            "and attrelid = 'conveyor.webhook_endpoints'::regclass"
        )
    }
    assert columns >= WEBHOOK_SECRETS
    beyond_whole_tables = {
        (name, privilege)
        for name, privilege in installed.held("authenticated", "column")
        if privilege == "SELECT" and name.split(".")[0] not in AUTHENTICATED_READS
    }
    assert beyond_whole_tables == {
        (f"webhook_endpoints.{column}", "SELECT") for column in columns - WEBHOOK_SECRETS
    }


def test_authenticated_may_write_only_read_at_on_notifications(installed: Install) -> None:
    writes = {g for g in installed.held("authenticated", "column") if g[1] != "SELECT"}
    assert writes == {("notifications.read_at", "UPDATE")}


def test_authenticated_holds_nothing_on_conveyor_sequences(installed: Install) -> None:
    assert installed.held("authenticated", "sequence") == set()


def test_authenticated_may_execute_only_conveyor_is_admin(installed: Install) -> None:
    assert installed.held("authenticated", "function") == {("conveyor_is_admin", "EXECUTE")}


# Conveyor's own objects


def test_conveyor_creates_every_table_in_schema_conveyor(installed: Install) -> None:
    tables = {name for (name,) in installed.rows(
        "select relname::text from pg_class where relnamespace = 'conveyor'::regnamespace"
    )}  # fmt: skip
    assert (AUTHENTICATED_READS | UNREADABLE_TABLES | {"webhook_endpoints"}) - tables == set()


def test_every_conveyor_table_has_row_level_security(installed: Install) -> None:
    assert (
        installed.rows(
            "select relname from pg_class where relnamespace = 'conveyor'::regnamespace "
            "and relkind in ('r', 'p') and not relrowsecurity order by 1"
        )
        == []
    )


def test_internal_functions_are_executable_by_service_role(installed: Install) -> None:
    overloads = installed.rows(
        "select proname::text, has_function_privilege('service_role', oid, 'EXECUTE') "
        "from pg_proc where pronamespace = 'conveyor'::regnamespace and proname = any(%s)",
        (list(INTERNAL_FUNCTIONS),),
    )
    assert {name for name, _ in overloads} == INTERNAL_FUNCTIONS
    assert [name for name, executable in overloads if not executable] == []


def test_no_conveyor_function_is_executable_by_public(installed: Install) -> None:
    assert (
        installed.rows(
            "select distinct p.proname from pg_proc p "
            "cross join aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "where p.pronamespace = 'conveyor'::regnamespace and a.grantee = 0 order by 1"
        )
        == []
    )


def test_schema_migrations_records_every_file_in_schema_conveyor(installed: Install) -> None:
    assert installed.rows(
        "select version, name, checksum from conveyor.schema_migrations order by version"
    ) == [(m.version, m.name, m.checksum) for m in discover()]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("kind", ["table", "column"])
def test_api_roles_hold_nothing_on_schema_migrations(
    installed: Install, role: str, kind: str
) -> None:
    held = installed.held(role, kind)
    assert {(name, p) for name, p in held if name.split(".")[0] == "schema_migrations"} == set()


# Running it again, and using it


def test_a_second_migrate_applies_nothing_and_changes_nothing(
    supabase_db: SupabaseDatabase,
) -> None:
    migrate(supabase_db.postgres_url)
    conveyor_before, host_before = conveyor_catalog(supabase_db), supabase_db.snapshot()
    assert migrate(supabase_db.postgres_url) == []
    assert changes(conveyor_before, conveyor_catalog(supabase_db)) == {}
    assert changes(host_before, supabase_db.snapshot()) == {}


def test_a_user_scoped_read_works_as_postgres_with_conveyors_search_path(
    installed: Install,
) -> None:
    claims = f'{{"sub": "{installed.db.users["alice"]}", "role": "authenticated"}}'
    with psycopg.connect(installed.db.postgres_url, options="-c search_path=conveyor") as conn:
        conn.execute(
            "select set_config('role', 'authenticated', true), "
            "set_config('request.jwt.claims', %s, true)",
            (claims,),
        )
        assert conn.execute("select current_user").fetchone() == ("authenticated",)
        assert conn.execute("select count(*) from workflow_runs").fetchone() == (0,)
        conn.rollback()


def test_an_api_read_as_authenticated_reaches_conveyor_tables(installed: Install) -> None:
    with installed.db.as_role("authenticated", installed.db.users["alice"]) as conn:
        assert conn.execute("select count(*) from conveyor.workflow_runs").fetchone() == (0,)
