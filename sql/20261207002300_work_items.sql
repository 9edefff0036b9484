-- Parallel branches and `map` (issue 23): the work a run hands to several workers at once.
-- One row per branch step (item 0) or per map item (its index in the list), taken by lanes
-- (the Celery task runs.execute_lane) with a lease of its own and fenced by the run's attempt;
-- the last item to finish queues the run again for its coordinator (conveyor/runs/lanes.py,
-- docs/architecture.md "Parallel branches and map").

create table conveyor.run_work_items (
  run_id uuid not null references conveyor.workflow_runs (id) on delete cascade,
  position integer not null check (position >= 0),
  item integer not null check (item between 0 and 9999),
  status text not null default 'pending'
    check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
  -- A map item's attempts (a branch counts them on its workflow_steps row).
  attempt integer not null default 0 check (attempt >= 0),
  lease_expires_at timestamptz,
  -- The map item's value from the list (null for a branch).
  input jsonb,
  output jsonb,
  output_url text,
  error text,
  error_code text,
  usage jsonb,
  started_at timestamptz,
  finished_at timestamptz,
  primary key (run_id, position, item)
);

-- A lane's next item: the lowest pending index of its step, or one whose lane died.
create index run_work_items_unfinished on conveyor.run_work_items (run_id, position, item)
  where status in ('pending', 'running');

alter table conveyor.run_work_items enable row level security;
create policy run_work_items_owner_or_admin_select on conveyor.run_work_items
  for select to authenticated
  using (exists (
    select 1 from conveyor.workflow_runs r
     where r.id = run_id and (r.user_id = auth.uid() or conveyor.conveyor_is_admin())
  ));
revoke all on conveyor.run_work_items from public, anon, authenticated;
grant select on conveyor.run_work_items to authenticated;
grant all on conveyor.run_work_items to service_role;
revoke all on type conveyor.run_work_items from public, anon, authenticated;
