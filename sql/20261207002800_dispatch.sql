-- Dispatch (issue 24): a run with a concurrency key or an explicit priority is held in Postgres
-- (queued, dispatched_at null) and published only when conveyor_dispatch_runs picks it. A run
-- without them is dispatched at insert (the column default) and published at once, as before.

alter table conveyor.workflow_runs
  add column concurrency_key text,
  add column concurrency_limit integer check (concurrency_limit between 1 and 10000),
  add column priority smallint check (priority between 0 and 9),
  add column not_before timestamptz,
  add column dispatched_at timestamptz default now();

-- Every run stored before this migration was published at submit.
update conveyor.workflow_runs set dispatched_at = created_at where dispatched_at is null;

-- Held runs by key in dispatch order (the '' key: held for priority only, no limit).
create index workflow_runs_held on conveyor.workflow_runs
  (coalesce(concurrency_key, ''), coalesce(priority, 5) desc, created_at)
  where status = 'queued' and dispatched_at is null;

-- A key's runs in flight: dispatched and not ended.
create index workflow_runs_in_flight_by_key on conveyor.workflow_runs (concurrency_key)
  where concurrency_key is not null and dispatched_at is not null
    and status in ('queued', 'running', 'waiting');

-- Held-path runs published and not yet claimed: what the dispatch window counts.
create index workflow_runs_dispatched_unclaimed on conveyor.workflow_runs (dispatched_at)
  where status = 'queued' and dispatched_at is not null
    and (concurrency_key is not null or priority is not null);

-- Marks and returns the held runs to publish now: per key at most its free slots (limit minus
-- runs in flight), by priority then round-robin across keys, at most p_window minus the
-- held-path runs already published and unclaimed. The advisory lock serializes dispatchers, so
-- two of them never both fill a key's last slot.
create function conveyor.conveyor_dispatch_runs(p_window integer)
returns setof uuid
language plpgsql
set search_path = conveyor, pg_temp
as $$
declare
  budget integer;
begin
  perform pg_advisory_xact_lock(hashtext('conveyor_dispatch_runs'));
  select p_window - count(*) into budget
    from conveyor.workflow_runs
   where status = 'queued' and dispatched_at is not null
     and (concurrency_key is not null or priority is not null);
  if budget <= 0 then
    return;
  end if;
  return query
  -- The keys with runs held: a skip scan of workflow_runs_held (one probe per key), not a
  -- read of every held run (a tenant may hold thousands).
  with recursive held_keys as (
    (select coalesce(r.concurrency_key, '') as k
       from conveyor.workflow_runs r
      where r.status = 'queued' and r.dispatched_at is null
      order by 1 limit 1)
    union all
    select (select coalesce(r.concurrency_key, '')
              from conveyor.workflow_runs r
             where r.status = 'queued' and r.dispatched_at is null
               and coalesce(r.concurrency_key, '') > h.k
             order by 1 limit 1)
      from held_keys h
     where h.k is not null
  ), slots as (
    select h.k,
           case when h.k = '' then budget
                -- The limit the key's next run was submitted with (one index probe).
                else (select r.concurrency_limit from conveyor.workflow_runs r
                       where r.status = 'queued' and r.dispatched_at is null
                         and coalesce(r.concurrency_key, '') = h.k
                       order by coalesce(r.priority, 5) desc, r.created_at limit 1)
                     - (select count(*) from conveyor.workflow_runs f
                         where f.concurrency_key = h.k and f.dispatched_at is not null
                           and f.status in ('queued', 'running', 'waiting'))
           end as free
      from held_keys h
     where h.k is not null
  ), candidates as (
    select c.id, c.pri, c.rank, c.created_at
      from slots s
      cross join lateral (
        select r.id, coalesce(r.priority, 5) as pri, r.created_at,
               row_number() over (order by coalesce(r.priority, 5) desc, r.created_at) as rank
          from conveyor.workflow_runs r
         where r.status = 'queued' and r.dispatched_at is null
           and coalesce(r.concurrency_key, '') = s.k
           and (r.not_before is null or r.not_before <= now())
         order by coalesce(r.priority, 5) desc, r.created_at
         limit greatest(least(s.free, budget), 0)
      ) c
  ), picked as (
    select id from candidates order by pri desc, rank, created_at limit budget
  )
  update conveyor.workflow_runs w
     set dispatched_at = now(), enqueued_at = now()
    from picked
   where w.id = picked.id
     -- Still held: a run cancelled after this statement's snapshot is not published.
     and w.status = 'queued' and w.dispatched_at is null
  returning w.id;
end;
$$;

revoke all on function conveyor.conveyor_dispatch_runs(integer) from public, anon, authenticated;
grant execute on function conveyor.conveyor_dispatch_runs(integer) to service_role;

-- A held run is claimed only once dispatched: a stray `runs.execute` for it (a message published
-- by hand, a duplicate) is then a no-op instead of a run past its key's limit. The claim as 000500
-- states it keeps its body under another name, executable by no role, and this wraps it.
alter function conveyor.conveyor_claim_run(uuid, integer) rename to conveyor_claim_run_unguarded;
revoke all on function conveyor.conveyor_claim_run_unguarded(uuid, integer)
  from public, anon, authenticated, service_role;

create function conveyor.conveyor_claim_run(p_run uuid, p_lease_seconds integer)
returns table (
  id uuid, user_id uuid, kind text, workflow_id text, input jsonb, attempt integer,
  session_id uuid, started_at timestamptz, steps jsonb, event_seq integer, event_data jsonb,
  event_at timestamptz
)
-- Definer: service_role keeps what 000500 granted it, the claim, and not the unguarded body.
language plpgsql security definer
set search_path = conveyor, pg_temp
as $$
begin
  if exists (select 1 from conveyor.workflow_runs r
              where r.id = p_run and r.status = 'queued' and r.dispatched_at is null) then
    return;
  end if;
  return query select * from conveyor.conveyor_claim_run_unguarded(p_run, p_lease_seconds);
end
$$;

revoke all on function conveyor.conveyor_claim_run(uuid, integer) from public, anon, authenticated;
grant execute on function conveyor.conveyor_claim_run(uuid, integer) to service_role;
