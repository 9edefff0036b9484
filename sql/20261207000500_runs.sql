-- Runs, their steps and their event log. The runs table is also the outbox: a run stays
-- `queued` until a worker claims it, and the reaper republishes queued runs that look lost.
-- Every step of a run has a row from submit on (pending) and carries its usage.

create table conveyor.workflow_runs (
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
  cancel_requested_at timestamptz,
  -- A run may belong to an agent session, to which it appends its reply.
  session_id uuid references conveyor.agent_sessions (id) on delete set null,
  -- Where a large output is stored (the output itself is then not in `output`).
  output_url text,
  -- A run may name its own callback URL at submit (outbound webhooks).
  webhook_url text check (char_length(webhook_url) <= 2000),
  constraint workflow_runs_user_idempotency_key unique (user_id, idempotency_key),
  constraint workflow_runs_finished_has_time
    check (status not in ('completed', 'failed', 'cancelled') or finished_at is not null)
);

create index workflow_runs_user_created on conveyor.workflow_runs (user_id, created_at desc, id desc);
-- The reaper's scan: only unfinished runs are ever looked at.
create index workflow_runs_unfinished on conveyor.workflow_runs (status, enqueued_at)
  where status in ('queued', 'running');
-- Admission counts a user's unfinished runs through this, reading only those.
create index workflow_runs_user_unfinished on conveyor.workflow_runs (user_id)
  where status in ('queued', 'running');
create index workflow_runs_session on conveyor.workflow_runs (session_id)
  where session_id is not null;
-- Analytics over all users (admins) scan by time.
create index workflow_runs_created on conveyor.workflow_runs (created_at);

create table conveyor.workflow_steps (
  id bigint generated always as identity primary key,
  run_id uuid not null references conveyor.workflow_runs (id) on delete cascade,
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
  error_code text,
  usage jsonb,
  output_url text,
  constraint workflow_steps_run_position unique (run_id, position)
);

create table conveyor.run_events (
  id bigint generated always as identity primary key,
  run_id uuid not null references conveyor.workflow_runs (id) on delete cascade,
  seq integer not null check (seq > 0),
  event text not null,
  data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  constraint run_events_run_seq unique (run_id, seq)
);

create index run_events_created on conveyor.run_events (created_at);


-- Runs each user created each UTC day, kept by a trigger on every insert into workflow_runs
-- (whichever path inserts), so admission reads one row instead of counting the day's runs (an
-- enterprise plan allows 100,000 a day). A refused or failed submit rolls its increment back.
create table conveyor.runs_per_day (
  user_id uuid not null,
  day date not null,
  runs bigint not null,
  primary key (user_id, day)
);

create function conveyor.conveyor_count_run() returns trigger
language plpgsql as $$
begin
  insert into conveyor.runs_per_day as c (user_id, day, runs)
  values (new.user_id, (new.created_at at time zone 'UTC')::date, 1)
  on conflict (user_id, day) do update set runs = c.runs + 1;
  return null;
end
$$;

create trigger workflow_runs_count_per_day
  after insert on conveyor.workflow_runs
  for each row execute function conveyor.conveyor_count_run();


-- Claiming a run takes one round trip: conveyor_claim_run takes the run, starts its first
-- unfinished step, reads the steps and appends the `running` event in one call that is its own
-- transaction, bumping the event seq in the claiming update. bench/load.py measures it.

-- The `workflow_status_update` payload of a run row, exactly as conveyor.runs.status_data builds
-- it in Python (updated_at as datetime.isoformat() writes it);
-- tests/integration/test_runs.py holds the two to the same output.
create function conveyor.conveyor_status_data(r conveyor.workflow_runs) returns jsonb
language sql stable as $$
  select jsonb_build_object(
    'workflow_run_id', r.id,
    'workflow_id', r.workflow_id,
    'user_id', r.user_id,
    'status', r.status,
    'step', r.current_step,
    -- A real's shortest digits, always with a decimal point: Python's float gives 0.0, not 0.
    'progress', (r.progress::text)::numeric + 0.0,
    'updated_at', to_char(r.updated_at, 'YYYY-MM-DD"T"HH24:MI:SS')
                  || case when extract(microseconds from r.updated_at)::integer % 1000000 = 0
                          then '' else to_char(r.updated_at, '.US') end
                  || to_char(r.updated_at, 'TZH:TZM'))
$$;

-- Take a queued run, or a running one whose lease expired, and start its first unfinished step
-- (its attempt counted now, so a step that kills its worker every time runs out of attempts).
-- No row: the run is not claimable (unknown, finished, cancelled, or held by a live lease).
create function conveyor.conveyor_claim_run(p_run uuid, p_lease_seconds integer)
returns table (
  id uuid, user_id uuid, kind text, workflow_id text, input jsonb, attempt integer,
  session_id uuid, started_at timestamptz, steps jsonb, event_seq integer, event_data jsonb,
  event_at timestamptz
)
language plpgsql as $$
#variable_conflict use_column
declare
  v_run conveyor.workflow_runs;
  v_event conveyor.run_events;
begin
  update conveyor.workflow_runs r
     set status = 'running',
         attempt = r.attempt + 1,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         heartbeat_at = now(),
         started_at = coalesce(r.started_at, now()),
         current_step = (select s.name from conveyor.workflow_steps s
                          where s.run_id = r.id and s.status <> 'completed'
                          order by s.position limit 1),
         updated_at = now(),
         last_event_seq = r.last_event_seq + 1
   where r.id = p_run
     and r.cancel_requested_at is null
     and (r.status = 'queued' or (r.status = 'running' and r.lease_expires_at < now()))
  returning r.* into v_run;
  if not found then
    return;
  end if;

  update conveyor.workflow_steps s
     set status = 'running', attempt = s.attempt + 1, started_at = now()
   where s.run_id = p_run and s.position = (
     select min(u.position) from conveyor.workflow_steps u
      where u.run_id = p_run and u.status <> 'completed');

  insert into conveyor.run_events (run_id, seq, event, data)
  values (p_run, v_run.last_event_seq, 'workflow_status_update',
          conveyor.conveyor_status_data(v_run))
  returning * into v_event;

  return query
  select v_run.id, v_run.user_id, v_run.kind, v_run.workflow_id, v_run.input, v_run.attempt,
         v_run.session_id, v_run.started_at,
         coalesce((select jsonb_agg(jsonb_build_object(
                     'position', s.position, 'name', s.name, 'status', s.status,
                     'attempt', s.attempt, 'output', s.output, 'output_url', s.output_url)
                     order by s.position)
                     from conveyor.workflow_steps s where s.run_id = p_run), '[]'),
         v_event.seq, v_event.data, v_event.created_at;
end
$$;

alter table conveyor.workflow_runs enable row level security;
alter table conveyor.workflow_steps enable row level security;
alter table conveyor.run_events enable row level security;

create policy workflow_runs_owner_or_admin_select on conveyor.workflow_runs
  for select to authenticated
  using (user_id = auth.uid() or conveyor.conveyor_is_admin());

create policy workflow_steps_owner_or_admin_select on conveyor.workflow_steps
  for select to authenticated
  using (exists (
    select 1 from conveyor.workflow_runs r
     where r.id = run_id and (r.user_id = auth.uid() or conveyor.conveyor_is_admin())
  ));

create policy run_events_owner_or_admin_select on conveyor.run_events
  for select to authenticated
  using (exists (
    select 1 from conveyor.workflow_runs r
     where r.id = run_id and (r.user_id = auth.uid() or conveyor.conveyor_is_admin())
  ));

alter table conveyor.runs_per_day enable row level security;

revoke all on conveyor.workflow_runs, conveyor.workflow_steps, conveyor.run_events,
  conveyor.runs_per_day from public, anon, authenticated;
grant select on conveyor.workflow_runs, conveyor.workflow_steps, conveyor.run_events
  to authenticated;
grant all on conveyor.workflow_runs, conveyor.workflow_steps, conveyor.run_events,
  conveyor.runs_per_day to service_role;
revoke all on function conveyor.conveyor_count_run(),
  conveyor.conveyor_status_data(conveyor.workflow_runs),
  conveyor.conveyor_claim_run(uuid, integer) from public, anon, authenticated;
grant execute on function conveyor.conveyor_count_run(),
  conveyor.conveyor_status_data(conveyor.workflow_runs),
  conveyor.conveyor_claim_run(uuid, integer) to service_role;
revoke all on type conveyor.workflow_runs, conveyor.workflow_steps, conveyor.run_events,
  conveyor.runs_per_day from public, anon, authenticated;
