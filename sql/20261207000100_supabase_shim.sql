-- What a Supabase project already provides, created only where it is missing (a plain Postgres
-- for development or tests). On Supabase every object below exists and this file changes
-- nothing. Each object is checked on its own; where the migrating role may not create one, the
-- error says what to run by hand.

do $$
declare
  v_role text;
  v_attributes text;
begin
  foreach v_role in array array['anon', 'authenticated', 'service_role'] loop
    v_attributes := case v_role when 'service_role' then 'nologin noinherit bypassrls'
                                else 'nologin noinherit' end;
    if not exists (select 1 from pg_roles where rolname = v_role) then
      begin
        execute format('create role %I %s', v_role, v_attributes);
      exception
        -- Roles are cluster-wide: two databases migrating at once may race to create one.
        when duplicate_object or unique_violation then null;
        when insufficient_privilege then
          raise exception 'role % is missing and % may not create it', v_role, current_user
            using hint = format('As a superuser run: create role %I %s;', v_role, v_attributes);
      end;
    end if;
  end loop;

  -- Conveyor's web runs a user's reads as `authenticated` (set local role), as PostgREST does.
  if not pg_has_role(current_user, 'authenticated', 'member') then
    raise exception '% is not a member of role authenticated', current_user
      using hint = format('As a superuser run: grant authenticated to %I;', current_user);
  end if;
end
$$;

do $$
begin
  if to_regnamespace('auth') is null then
    begin
      create schema auth;
    exception when insufficient_privilege then
      raise exception 'schema auth is missing and % may not create it', current_user
        using hint = format('As a superuser run: create schema auth authorization %I;',
                            current_user);
    end;
    grant usage on schema auth to anon, authenticated, service_role;
    -- Only in a schema of its own making: Supabase's auth.users is never touched.
    create table auth.users (
      id uuid primary key,
      email text,
      raw_app_meta_data jsonb not null default '{}'::jsonb,
      raw_user_meta_data jsonb not null default '{}'::jsonb,
      created_at timestamptz not null default now()
    );
  end if;

  -- Same contract as Supabase's helpers: read the claims PostgREST sets per request.
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $fn$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $fn$;
    grant execute on function auth.jwt() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $fn$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $fn$;
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
      language sql stable
      as $fn$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $fn$;
    grant execute on function auth.role() to anon, authenticated, service_role;
  end if;
exception when insufficient_privilege then
  raise exception 'schema auth lacks an object Conveyor needs and % may not create it: %',
    current_user, sqlerrm
    using hint = 'Create auth.users, auth.uid(), auth.jwt() and auth.role() as Supabase defines '
                 'them (this file shows them), or run this migration as the owner of schema auth.';
end
$$;
