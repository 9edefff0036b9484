-- Conveyor's own schema: every table, type and function it creates lives here, never in the
-- host app's `public`. The migration record lives here too, so this file comes first and runs
-- the same under `conveyor migrate` and `supabase db push` (`conveyor sql --out`).

create schema conveyor;

create table conveyor.schema_migrations (
  version text primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now()
);

-- Only the migrating role (the owner) reads or writes the record.
alter table conveyor.schema_migrations enable row level security;
revoke all on schema conveyor from public;
revoke all on conveyor.schema_migrations from public;
revoke all on type conveyor.schema_migrations from public;
