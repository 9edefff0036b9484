-- What Supabase's API roles may do in schema conveyor, and what its new objects give by default.
-- Supabase's default privileges give anon, authenticated and service_role everything new in
-- `public`; they do not reach this schema, and nothing here is inherited: every file that follows
-- grants each object to its readers.
-- Postgres lets PUBLIC execute any new function, and a per-schema default cannot take that
-- back, so each file also revokes its functions from public.

revoke all on schema conveyor from public, anon;
-- The web's user reads run as `authenticated` under RLS; the service role (Supabase's server
-- key) may reach Conveyor's objects; anon never.
grant usage on schema conveyor to authenticated, service_role;

alter default privileges in schema conveyor grant all on tables to service_role;
alter default privileges in schema conveyor grant all on sequences to service_role;
alter default privileges in schema conveyor grant execute on functions to service_role;
alter default privileges in schema conveyor grant usage on types to service_role;

revoke all on conveyor.schema_migrations from anon, authenticated;
revoke all on type conveyor.schema_migrations from anon, authenticated;
