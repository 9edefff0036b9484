-- Schedules through the API (issue 24): a user's workflow with its inputs on a cron expression in
-- an IANA timezone. The beat job `fire_schedules` starts a run for each due period, once: the
-- run's idempotency key names the schedule and the period (conveyor/ops/user_schedules.py).

create table conveyor.schedules (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  workflow_id text not null,
  input jsonb not null default '{}'::jsonb,
  cron text not null check (char_length(cron) between 9 and 100),
  timezone text not null check (char_length(timezone) between 1 and 64),
  paused boolean not null default false,
  -- The next period to fire (UTC); the beat job moves it on as it fires.
  next_due_at timestamptz not null,
  last_fired_at timestamptz,
  last_run_id uuid,
  -- Why the last due period did not start a run (a refused admission, a changed workflow).
  last_error text,
  last_error_code text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- The beat job's scan: active schedules by when they are due.
create index schedules_due on conveyor.schedules (next_due_at) where not paused;
create index schedules_user on conveyor.schedules (user_id, created_at);

alter table conveyor.schedules enable row level security;
create policy schedules_owner_or_admin_select on conveyor.schedules
  for select to authenticated
  using (user_id = auth.uid() or conveyor.conveyor_is_admin());
revoke all on conveyor.schedules from public, anon, authenticated;
grant select on conveyor.schedules to authenticated;
grant all on conveyor.schedules to service_role;
revoke all on type conveyor.schedules from public, anon, authenticated;
