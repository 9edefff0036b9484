-- Runs, their steps and their event log. The runs table is also the outbox: a run stays
-- `queued` until a worker claims it, and the reaper republishes queued runs that look lost.

create table public.workflow_runs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  kind text not null check (kind in ('agent', 'workflow')),
  workflow_id text not null,
  status text not null default 'queued'
    check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
  input jsonb not null default '{}'::jsonb,
  metadata jsonb not null default '{}'::jsonb,
  output jsonb,
  error text,
  error_code text,
  idempotency_key text check (char_length(idempotency_key) between 1 and 255),
  progress real not null default 0 check (progress between 0 and 1),
  current_step text,
  -- The claim: attempt is the fencing token, lease_expires_at says when another worker may take over.
  attempt integer not null default 0 check (attempt >= 0),
  lease_expires_at timestamptz,
  heartbeat_at timestamptz,
  enqueued_at timestamptz,
  last_event_seq integer not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint workflow_runs_user_idempotency_key unique (user_id, idempotency_key),
  constraint workflow_runs_finished_has_time
    check (status not in ('completed', 'failed', 'cancelled') or finished_at is not null)
);

create index workflow_runs_user_created on public.workflow_runs (user_id, created_at desc, id desc);
-- The reaper's scan: only unfinished runs are ever looked at.
create index workflow_runs_unfinished on public.workflow_runs (status, enqueued_at)
  where status in ('queued', 'running');

create table public.workflow_steps (
  id bigint generated always as identity primary key,
  run_id uuid not null references public.workflow_runs (id) on delete cascade,
  position integer not null check (position >= 0),
  name text not null,
  kind text not null,
  status text not null default 'pending'
    check (status in ('pending', 'running', 'completed', 'failed', 'skipped', 'cancelled')),
  attempt integer not null default 0,
  output jsonb,
  error text,
  started_at timestamptz,
  finished_at timestamptz,
  constraint workflow_steps_run_position unique (run_id, position)
);

create table public.run_events (
  id bigint generated always as identity primary key,
  run_id uuid not null references public.workflow_runs (id) on delete cascade,
  seq integer not null check (seq > 0),
  event text not null,
  data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  constraint run_events_run_seq unique (run_id, seq)
);

create index run_events_created on public.run_events (created_at);

alter table public.workflow_runs enable row level security;
alter table public.workflow_steps enable row level security;
alter table public.run_events enable row level security;

create policy workflow_runs_owner_select on public.workflow_runs
  for select to authenticated
  using (user_id = auth.uid());

create policy workflow_steps_owner_select on public.workflow_steps
  for select to authenticated
  using (exists (
    select 1 from public.workflow_runs r where r.id = run_id and r.user_id = auth.uid()
  ));

create policy run_events_owner_select on public.run_events
  for select to authenticated
  using (exists (
    select 1 from public.workflow_runs r where r.id = run_id and r.user_id = auth.uid()
  ));

grant select on public.workflow_runs, public.workflow_steps, public.run_events to authenticated;
grant all on public.workflow_runs, public.workflow_steps, public.run_events to service_role;
