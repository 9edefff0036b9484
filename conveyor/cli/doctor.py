"""`conveyor doctor`: what is configured, what is reachable, what is missing."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import redis
from psycopg.rows import TupleRow

from conveyor.constants import SCHEMA
from conveyor.ops.erasure import TRIGGER_FUNCTION, TRIGGER_SQL
from conveyor.ops.migrations import pending
from conveyor.runs.artifacts import store_for
from conveyor.runs.supabase_storage import StorageUnavailable, SupabaseArtifactStore
from conveyor.settings import Settings

# Supabase's role for requests carrying only the project's public (anon) key: anyone's.
ANON_ROLE = "anon"
TABLE_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
COLUMN_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "REFERENCES"]
# (kind, object, privilege) for each privilege `role` holds on `schema` and what is in it,
# directly, through PUBLIC or through a role it inherits: the schema, tables, views, sequences,
# columns granted one by one, functions and procedures.
ROLE_PRIVILEGES_SQL = """
select 'schema', n.nspname::text, p.privilege
  from pg_namespace n, unnest(array['USAGE', 'CREATE']) as p(privilege)
 where n.nspname = %(schema)s and has_schema_privilege(%(role)s::name, n.oid, p.privilege)
union all
select case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                      when 'f' then 'foreign table' else 'table' end,
       format('%%I.%%I', n.nspname, c.relname), p.privilege
  from pg_class c join pg_namespace n on n.oid = c.relnamespace,
       unnest(%(table_privileges)s::text[]) as p(privilege)
 where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and has_table_privilege(%(role)s::name, c.oid, p.privilege)
union all
select 'column', format('%%I.%%I.%%I', n.nspname, c.relname, a.attname), p.privilege
  from pg_attribute a join pg_class c on c.oid = a.attrelid
       join pg_namespace n on n.oid = c.relnamespace,
       unnest(%(column_privileges)s::text[]) as p(privilege)
 where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'f')
   and a.attnum > 0 and not a.attisdropped
   and has_column_privilege(%(role)s::name, c.oid, a.attnum, p.privilege)
   and not has_table_privilege(%(role)s::name, c.oid, p.privilege)
union all
select 'sequence', format('%%I.%%I', n.nspname, c.relname), p.privilege
  from pg_class c join pg_namespace n on n.oid = c.relnamespace,
       unnest(array['USAGE', 'SELECT', 'UPDATE']) as p(privilege)
 where n.nspname = %(schema)s and c.relkind = 'S'
   and has_sequence_privilege(%(role)s::name, c.oid, p.privilege)
union all
select case f.prokind when 'p' then 'procedure' when 'a' then 'aggregate' else 'function' end,
       format('%%I.%%I(%%s)', n.nspname, f.proname, pg_get_function_identity_arguments(f.oid)),
       'EXECUTE'
  from pg_proc f join pg_namespace n on n.oid = f.pronamespace
 where n.nspname = %(schema)s and has_function_privilege(%(role)s::name, f.oid, 'EXECUTE')
"""


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    # A check that is not ok only advises (printed `warn`, exit code unchanged): something the
    # host may do on purpose another way.
    warn_only: bool = False


def check_postgres(url: str | None) -> list[Check]:
    """Is Postgres reachable, and are all migrations applied?"""
    if url is None:
        return [
            Check("postgres", True, "DATABASE_URL unset: `conveyor run` starts an embedded one")
        ]
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("show server_version").fetchone()
        todo = pending(url)
    except psycopg.Error as exc:
        return [Check("postgres", False, f"unreachable: {' '.join(str(exc).split())}")]
    version = row[0] if row else "?"
    return [
        Check("postgres", True, f"reachable, server {version}"),
        Check(
            "migrations",
            not todo,
            "up to date" if not todo else f"{len(todo)} pending: run `conveyor migrate`",
        ),
        *check_anon(url),
        check_user_deletion(url),
    ]


def role_privileges(
    conn: psycopg.Connection[TupleRow], role: str, schema: str = SCHEMA
) -> dict[tuple[str, str], list[str]]:
    """(kind, object) -> the privileges role holds on schema and each object in it."""
    held: dict[tuple[str, str], list[str]] = {}
    rows = conn.execute(
        ROLE_PRIVILEGES_SQL,
        {
            "role": role,
            "schema": schema,
            "table_privileges": TABLE_PRIVILEGES,
            "column_privileges": COLUMN_PRIVILEGES,
        },
    )
    for kind, name, privilege in rows:
        held.setdefault((kind, name), []).append(privilege)
    return held


def schema_first(item: tuple[tuple[str, str], list[str]]) -> tuple[bool, str, str]:
    """Sort key of role_privileges' items: the schema, then objects by name (a table's columns
    after it)."""
    (kind, name), _ = item
    return (kind != "schema", name, kind)


def check_anon(url: str, role: str = ANON_ROLE) -> list[Check]:
    """One failing check per object of Conveyor's schema that role (Supabase's `anon`: anyone
    holding the public key) holds any privilege on; one passing check when it holds none."""
    name = f"{role} access"
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            if conn.execute("select to_regrole(%s) is null", (role,)).fetchone() == (True,):
                return [Check(name, True, f"role {role} does not exist: not checked")]
            if conn.execute("select to_regnamespace(%s) is null", (SCHEMA,)).fetchone() == (True,):
                return [Check(name, True, f"schema {SCHEMA} does not exist yet: not checked")]
            held = role_privileges(conn, role)
    except psycopg.Error as exc:
        return [Check(name, False, f"could not be checked: {' '.join(str(exc).split())}")]
    if not held:
        return [Check(name, True, f"{role} holds no privilege on schema {SCHEMA} or its objects")]
    return [
        Check(name, False, f"{role} holds {', '.join(privileges)} on {kind} {obj}: revoke it")
        for (kind, obj), privileges in sorted(held.items(), key=schema_first)
    ]


USER_DELETION = "user deletion"
# The enabled row-level triggers on auth.users that run after a delete and call Conveyor's trigger
# function (tgtype bits: 1 row, 2 before, 8 delete). Catalogs only: no privilege on auth needed.
ERASURE_TRIGGERS_SQL = """
select t.tgname::text
  from pg_trigger t join pg_class c on c.oid = t.tgrelid
       join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'auth' and c.relname = 'users' and not t.tgisinternal
   and t.tgenabled <> 'D' and t.tgtype & 9 = 9 and t.tgtype & 2 = 0
   and t.tgfoid = to_regprocedure(%(function)s)
 order by 1
"""


def check_user_deletion(url: str) -> Check:
    """Does deleting a user in Supabase Auth forget their Conveyor rows? A warning, not a failure,
    when no trigger on auth.users does: the host may run `conveyor users forget` instead."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            has_users = conn.execute(
                "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'auth' and c.relname = 'users'"
            ).fetchone()
            if has_users is None:
                return Check(
                    USER_DELETION,
                    True,
                    "no auth.users table: nothing here deletes users "
                    "(`conveyor users forget USER_ID` forgets one)",
                )
            function = f"{TRIGGER_FUNCTION}()"
            if conn.execute("select to_regprocedure(%s)", (function,)).fetchone() == (None,):
                return Check(USER_DELETION, True, "not checked until the migrations are applied")
            triggers = [
                row[0] for row in conn.execute(ERASURE_TRIGGERS_SQL, {"function": function})
            ]
    except psycopg.Error as exc:
        detail = f"could not be checked: {' '.join(str(exc).split())}"
        return Check(USER_DELETION, False, detail, warn_only=True)
    if triggers:
        return Check(
            USER_DELETION,
            True,
            f"trigger {', '.join(triggers)} on auth.users forgets a deleted user's Conveyor rows",
        )
    return Check(
        USER_DELETION,
        False,
        "a user deleted in Supabase Auth keeps their Conveyor rows (until `conveyor users "
        f"forget USER_ID`); to forget them with the user, run once as postgres: {TRIGGER_SQL}",
        warn_only=True,
    )


def check_redis(url: str | None) -> Check:
    """Is Redis reachable?"""
    if url is None:
        return Check("redis", True, "REDIS_URL unset: `conveyor run` starts an embedded one")
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return Check("redis", False, f"unreachable: {exc}")
    finally:
        client.close()
    return Check("redis", True, f"reachable, server {version}")


def check_storage(settings: Settings) -> Check:
    """Where large step outputs go; for Supabase Storage, that its bucket exists and is private."""
    store = store_for(settings)
    if not isinstance(store, SupabaseArtifactStore):
        return Check(
            "storage",
            True,
            f"SUPABASE_URL or SUPABASE_SERVICE_ROLE_KEY unset: large outputs in "
            f"{settings.data_dir}/artifacts (readable on this host only)",
        )
    try:
        state = store.bucket_state()
    except StorageUnavailable as exc:
        return Check("storage", False, exc.message)
    if not state.exists:
        return Check("storage", False, f"bucket {store.bucket!r} missing: run `conveyor migrate`")
    if state.public:
        return Check(
            "storage",
            False,
            f"bucket {store.bucket!r} is public: anyone with an object's URL reads step outputs; "
            "make it private in the Storage settings",
        )
    return Check("storage", True, f"Supabase Storage bucket {store.bucket!r} exists, private")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix them."""
    secret = (
        "SUPABASE_JWT_SECRET set"
        if settings.supabase_jwt_secret
        else f"development secret in {settings.data_dir}/jwt-secret (set SUPABASE_JWT_SECRET)"
    )
    return [
        Check("environment", True, settings.environment),
        *check_postgres(settings.database_url),
        check_redis(settings.redis_url),
        check_storage(settings),
        Check("jwt", True, secret),
        Check("timezone", True, settings.timezone),
        Check(
            "stripe",
            True,
            "configured" if settings.stripe_secret_key else "not configured (payments disabled)",
        ),
    ]
