"""A private Postgres cluster shaped like a Supabase project, with a host app already in it.

Built from what Supabase's init scripts establish: a superuser `supabase_admin`, a non-superuser
`postgres` (what the SQL editor and installers connect as), the API roles, an `auth` schema owned
by `supabase_auth_admin` and default privileges handing every new object in `public` to them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

# pgserver ships the server binaries; found without importing it (its import has side effects).
_PGSERVER_SPEC = importlib.util.find_spec("pgserver")
if _PGSERVER_SPEC is None or _PGSERVER_SPEC.origin is None:
    raise ImportError("tests/supabase_like.py needs the pgserver package for its binaries")
PG_ROOT = Path(_PGSERVER_SPEC.origin).parent / "pginstall"
PG_BIN = PG_ROOT / "bin"
# Postgres refuses to run as root; pgserver runs it as this system user instead, and so do we.
SERVER_USER = "pgserver"
TEMPLATE_DB = "sb_template"
START_TIMEOUT_SECONDS = 30

# Seeded host-app users: alice (an editor) and bob are plain users, carol is the app's admin.
SEED_USERS = {
    "alice": uuid.UUID("00000000-0000-4000-8000-00000000a11c"),
    "bob": uuid.UUID("00000000-0000-4000-8000-000000000b0b"),
    "carol": uuid.UUID("00000000-0000-4000-8000-0000000ca201"),
}

ROLES_SQL = """
create role postgres login createdb createrole replication bypassrls;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
create role supabase_auth_admin login noinherit createrole;
grant anon, authenticated, service_role to authenticator;
-- The SQL editor runs as postgres and may `set role authenticated` to try a policy.
grant anon, authenticated, service_role to postgres;
"""

# Run as supabase_admin in a new database.
PLATFORM_SQL = """
create schema auth authorization supabase_auth_admin;
set role supabase_auth_admin;
create table auth.users (
  id uuid primary key,
  email text,
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);
-- PostgREST sets the claims per request; older versions set one setting per claim.
create function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                  nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;
create function auth.uid() returns uuid language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid
$$;
create function auth.role() returns text language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                  nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')::text
$$;
grant usage on schema auth to anon, authenticated, service_role, postgres;
grant execute on function auth.jwt(), auth.uid(), auth.role()
  to anon, authenticated, service_role, postgres;
-- App tables reference auth.users and apps read it; Supabase gives postgres broad rights on it.
grant all on auth.users to postgres;
reset role;

grant usage on schema public to postgres, anon, authenticated, service_role;
grant create on schema public to postgres;
alter default privileges for role postgres in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
"""

# Run as postgres: a typical app built in the dashboard, with names Conveyor also uses.
HOST_APP_SQL = """
create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  display_name text,
  created_at timestamptz not null default now()
);
create table public.user_roles (
  user_id uuid not null references auth.users (id) on delete cascade,
  app_role text not null check (app_role in ('admin', 'editor')),
  primary key (user_id, app_role)
);
create table public.notifications (
  id bigserial primary key,
  profile_id uuid not null references public.profiles (id) on delete cascade,
  body text not null,
  seen boolean not null default false
);
-- security definer so the policy below can read user_roles without recursing into its RLS.
create function public.is_app_admin() returns boolean
  language sql stable security definer set search_path = ''
  as $$ select exists (select 1 from public.user_roles
                       where user_id = auth.uid() and app_role = 'admin') $$;
create function public.get_public_stats() returns bigint
  language sql stable security definer set search_path = ''
  as $$ select count(*) from public.profiles $$;
grant execute on function public.get_public_stats() to anon;
create function public.handle_new_user() returns trigger
  language plpgsql security definer set search_path = ''
  as $$ begin
    insert into public.profiles (id, display_name)
      values (new.id, new.raw_user_meta_data ->> 'name');
    return new;
  end $$;
alter table public.profiles enable row level security;
alter table public.user_roles enable row level security;
alter table public.notifications enable row level security;
create policy "read own profile" on public.profiles for select to authenticated
  using (id = auth.uid());
create policy "admins read every profile" on public.profiles for select to authenticated
  using (public.is_app_admin());
create policy "read own roles" on public.user_roles for select to authenticated
  using (user_id = auth.uid());
create policy "read own notifications" on public.notifications for select to authenticated
  using (profile_id = auth.uid());
"""

# Run as supabase_admin, as the dashboard does for triggers on auth tables.
HOST_TRIGGER_SQL = """
create trigger on_auth_user_created after insert on auth.users
  for each row execute function public.handle_new_user();
"""


Snapshot = dict[str, list[tuple[Any, ...]]]

# Each query reads the schemas named by %(s)s, in a stable order; ACLs and owners as text.
CATALOG_QUERIES = {
    "schemas": """select nspname, nspowner::regrole::text, nspacl::text from pg_namespace
        where nspname = any(%(s)s) order by 1""",
    "relations": """select relnamespace::regnamespace::text, relname, relkind,
        relowner::regrole::text, relacl::text, relrowsecurity, relforcerowsecurity from pg_class
        where relnamespace::regnamespace::text = any(%(s)s) order by 1, 2""",
    "columns": """select attrelid::regclass::text, attname, format_type(atttypid, atttypmod),
        attnotnull, pg_get_expr(adbin, adrelid), attacl::text
        from pg_attribute join pg_class on pg_class.oid = attrelid
        left join pg_attrdef on adrelid = attrelid and adnum = attnum
        where relnamespace::regnamespace::text = any(%(s)s) and attnum > 0 and not attisdropped
        order by 1, 2""",
    "constraints": """select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint where connamespace::regnamespace::text = any(%(s)s) order by 1, 2""",
    "indexes": """select schemaname, tablename, indexname, indexdef from pg_indexes
        where schemaname = any(%(s)s) order by 1, 2, 3""",
    "functions": """select pronamespace::regnamespace::text, proname,
        pg_get_function_identity_arguments(oid), proowner::regrole::text, proacl::text, prosrc,
        prosecdef, proconfig::text, provolatile from pg_proc
        where pronamespace::regnamespace::text = any(%(s)s) order by 1, 2, 3""",
    "types": """select typnamespace::regnamespace::text, typname, typtype,
        typowner::regrole::text, typacl::text from pg_type
        where typnamespace::regnamespace::text = any(%(s)s) order by 1, 2""",
    "policies": """select polrelid::regclass::text, polname, polcmd, polpermissive,
        polroles::regrole[]::text, pg_get_expr(polqual, polrelid),
        pg_get_expr(polwithcheck, polrelid) from pg_policy join pg_class on pg_class.oid = polrelid
        where relnamespace::regnamespace::text = any(%(s)s) order by 1, 2""",
    "triggers": """select tgrelid::regclass::text, tgname, tgenabled,
        pg_get_triggerdef(pg_trigger.oid) from pg_trigger join pg_class on pg_class.oid = tgrelid
        where relnamespace::regnamespace::text = any(%(s)s) and not tgisinternal order by 1, 2""",
    # Cluster-wide defaults (namespace 0) shape the host's future objects too.
    "default_privileges": """select defaclrole::regrole::text,
        defaclnamespace::regnamespace::text, defaclobjtype, defaclacl::text from pg_default_acl
        where defaclnamespace = 0 or defaclnamespace::regnamespace::text = any(%(s)s)
        order by 1, 2, 3""",
    "roles": """select rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
        rolbypassrls, rolconfig::text, array(select roleid::regrole::text from pg_auth_members
        where member = pg_roles.oid order by 1)::text from pg_roles
        where rolname in ('postgres', 'anon', 'authenticated', 'service_role', 'authenticator')
        order by 1""",
}


def catalog_snapshot(conn: psycopg.Connection[Any], schemas: tuple[str, ...]) -> Snapshot:
    """Definitions, owners and ACLs of everything in schemas, and Supabase's roles."""
    with conn.transaction():
        # An empty search_path makes regclass and pg_get_*def spell every name in full.
        conn.execute("select set_config('search_path', '', true)")
        return {
            name: conn.execute(query, {"s": list(schemas)}).fetchall()
            for name, query in CATALOG_QUERIES.items()
        }


@dataclass(frozen=True)
class SupabaseDatabase:
    """One database in the cluster, as seen by Supabase's roles."""

    name: str
    admin_url: str  # supabase_admin, the superuser
    postgres_url: str  # postgres, the non-superuser Conveyor installs with
    authenticator_url: str  # what PostgREST logs in as before switching role
    auth_admin_url: str  # supabase_auth_admin: what Supabase Auth signs up and deletes users as
    users: ClassVar[Mapping[str, uuid.UUID]] = SEED_USERS

    def snapshot(self, schemas: tuple[str, ...] = ("public", "auth")) -> Snapshot:
        """catalog_snapshot of schemas; by default what the host app and Supabase own."""
        with psycopg.connect(self.admin_url) as conn:
            return catalog_snapshot(conn, schemas)

    @contextmanager
    def as_role(self, role: str, sub: uuid.UUID | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A transaction running as role with a request's JWT claims, as PostgREST sets them up."""
        claims = {"role": role} | ({"sub": str(sub)} if sub else {})
        with psycopg.connect(self.authenticator_url) as conn:
            conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                (role, json.dumps(claims)),
            )
            try:
                yield conn
            finally:
                conn.rollback()


class SupabaseCluster:
    """A throwaway cluster: initdb as supabase_admin, unix socket only, a template to clone."""

    def __init__(self) -> None:
        """Pick the directories and the system user; nothing runs until start()."""
        # Short: the socket path (dir + "/.s.PGSQL.5432") must fit in ~107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="sb-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.run_as = SERVER_USER if os.geteuid() == 0 else None

    def url(self, user: str, dbname: str) -> str:
        """A libpq URL for user on dbname, over the cluster's unix socket."""
        return f"postgresql://{user}@/{dbname}?host={quote(str(self.base), safe='')}"

    def _run(self, *args: str) -> None:
        """Run a server binary (as the unprivileged user when we are root); fail with its output."""
        output = self.base / "commands.out"
        with open(output, "a") as out:
            # Output to a file, not a pipe: the server pg_ctl starts inherits its descriptors.
            done = subprocess.run(
                [str(PG_BIN / args[0]), *args[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.run_as,
                timeout=START_TIMEOUT_SECONDS,
            )
        if done.returncode:
            server_log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{output.read_text()[-3000:]}\n{server_log}")

    def _admin(self, statement: str | sql.Composed) -> None:
        """Run one statement as supabase_admin in the maintenance database."""
        with psycopg.connect(self.url("supabase_admin", "postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def _prepare_root_run(self) -> None:
        """Let the unprivileged user run the binaries and own the cluster's directory."""
        assert self.run_as is not None
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", self.run_as], check=True)
            entry = pwd.getpwnam(self.run_as)
        readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        for folder in (PG_ROOT, *PG_ROOT.parents):
            folder.chmod(folder.stat().st_mode | readable)
        for root, dirs, files in os.walk(PG_ROOT):
            for name in (*dirs, *files):
                path = Path(root) / name
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | readable)
        os.chown(self.base, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        """initdb, start the server and build the template database."""
        if self.run_as is not None:
            self._prepare_root_run()
        self._run(
            "initdb", "-D", str(self.data), "-U", "supabase_admin", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            # No TCP at all; durability is pointless for a cluster deleted at teardown.
            conf.write(
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.base}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 40\n"
            )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")
        self._admin(ROLES_SQL)
        self._admin(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE_DB)))
        self._build_template()

    def _build_template(self) -> None:
        """Supabase's platform objects, then the host app, then its seed users."""
        admin_url = self.url("supabase_admin", TEMPLATE_DB)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(PLATFORM_SQL)
        with psycopg.connect(self.url("postgres", TEMPLATE_DB), autocommit=True) as conn:
            conn.execute(HOST_APP_SQL)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(HOST_TRIGGER_SQL)
            for name, user in SEED_USERS.items():
                conn.execute(
                    "insert into auth.users (id, email, raw_user_meta_data) values (%s, %s, %s)",
                    (user, f"{name}@example.com", json.dumps({"name": name})),
                )
            conn.execute(
                "insert into public.user_roles (user_id, app_role) "
                "values (%s, 'admin'), (%s, 'editor')",
                (SEED_USERS["carol"], SEED_USERS["alice"]),
            )
            conn.execute(
                "insert into public.notifications (profile_id, body) values (%s, 'welcome')",
                (SEED_USERS["alice"],),
            )

    def create_database(self) -> SupabaseDatabase:
        """A fresh copy of the template, where postgres may create schemas as on Supabase."""
        name = f"sb_{uuid.uuid4().hex[:12]}"
        db = sql.Identifier(name)
        create = "create database {} template {} strategy file_copy"
        self._admin(sql.SQL(create).format(db, sql.Identifier(TEMPLATE_DB)))
        # Database ACLs are not copied from the template.
        self._admin(sql.SQL("grant create, temporary on database {} to postgres").format(db))
        return SupabaseDatabase(
            name=name,
            admin_url=self.url("supabase_admin", name),
            postgres_url=self.url("postgres", name),
            authenticator_url=self.url("authenticator", name),
            auth_admin_url=self.url("supabase_auth_admin", name),
        )

    def drop_database(self, database: SupabaseDatabase) -> None:
        """Drop a database made by create_database, even if connections are left open."""
        drop = sql.SQL("drop database if exists {} with (force)")
        self._admin(drop.format(sql.Identifier(database.name)))

    def stop(self) -> None:
        """Stop the server at once and delete everything it wrote."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def supabase_cluster() -> Iterator[SupabaseCluster]:
    """A running Supabase-shaped cluster for the session, deleted afterwards."""
    cluster = SupabaseCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def supabase_db(supabase_cluster: SupabaseCluster) -> Iterator[SupabaseDatabase]:
    """A fresh database holding Supabase's platform objects and the host app, for one test."""
    database = supabase_cluster.create_database()
    try:
        yield database
    finally:
        supabase_cluster.drop_database(database)
