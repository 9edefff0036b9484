-- Periodic jobs run exactly once per period: every run of a job first claims (job, period_key)
-- here. A second claim for a period that is done or running is refused and counted as skipped;
-- a failed period (or one whose worker died) can be claimed again.
create table conveyor.maintenance_runs (
  id bigint generated always as identity primary key,
  job text not null check (job ~ '^[a-z][a-z0-9_]{0,63}$'),
  period_key text not null check (char_length(period_key) between 1 and 64),
  status text not null check (status in ('running', 'succeeded', 'failed')),
  attempts integer not null default 1 check (attempts >= 1),
  skipped integer not null default 0 check (skipped >= 0),
  claimed_by text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  rows_affected jsonb not null default '{}'::jsonb,
  error text,
  constraint maintenance_runs_once unique (job, period_key)
);

create index maintenance_runs_job_started on conveyor.maintenance_runs (job, started_at desc);


-- Daily usage per user and model, rolled up from usage_events (analytics read this rather than
-- scanning raw events; the rows for a day are replaced whole, so a rerun gives the same totals).
create table conveyor.usage_daily (
  day date not null,
  user_id uuid not null,
  model text not null,
  requests bigint not null,
  prompt_tokens bigint not null,
  completion_tokens bigint not null,
  cost_micro_usd bigint not null,
  failed bigint not null,
  primary key (day, user_id, model)
);

-- Claim (job, period): a new row, or a failed one (or one running for longer than p_stale, whose
-- worker died) taken again. Returns the run id, or null when the period is done or in progress,
-- in which case the refused claim is counted in `skipped`.
create function conveyor.claim_maintenance_run(
  p_job text, p_period text, p_claimed_by text, p_stale interval
) returns bigint
language plpgsql as $$
declare
  v_id bigint;
begin
  insert into conveyor.maintenance_runs as m (job, period_key, status, claimed_by)
  values (p_job, p_period, 'running', p_claimed_by)
  on conflict (job, period_key) do update
     set status = 'running', attempts = m.attempts + 1, claimed_by = excluded.claimed_by,
         started_at = now(), finished_at = null, error = null
   where m.status = 'failed' or (m.status = 'running' and m.started_at < now() - p_stale)
  returning m.id into v_id;
  if v_id is null then
    update conveyor.maintenance_runs set skipped = skipped + 1
     where job = p_job and period_key = p_period;
  end if;
  return v_id;
end
$$;

alter table conveyor.maintenance_runs enable row level security;
alter table conveyor.usage_daily enable row level security;

create policy usage_daily_owner_or_admin_select on conveyor.usage_daily
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());

revoke all on conveyor.maintenance_runs, conveyor.usage_daily from public, anon, authenticated;
grant select on conveyor.usage_daily to authenticated;
grant all on conveyor.maintenance_runs, conveyor.usage_daily to service_role;
revoke all on function conveyor.claim_maintenance_run(text, text, text, interval)
  from public, anon, authenticated;
grant execute on function conveyor.claim_maintenance_run(text, text, text, interval)
  to service_role;
revoke all on type conveyor.maintenance_runs, conveyor.usage_daily from public, anon, authenticated;
