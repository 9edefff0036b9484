-- The dispatcher (20261207002800) as before, with plans that stay cheap as held runs pile up.
-- A dispatch that picks one run cost 0.2 ms with a few runs held but 1.4 ms with 10,000 held, and
-- 2 ms with 1,200 held when workflow_runs was last analyzed before the burst; it is 0.2-0.27 ms
-- in all three now (bench/dispatch_overhead.py's state, measured one call at a time). Two causes:
-- - The update joined the picks to every held run (a seq scan, or a walk of the whole
--   workflow_runs_held index); it now marks them by primary key. `status || ''` keeps that
--   index's predicate from matching the re-check, so the planner cannot prefer it.
-- - Statistics taken while nothing was queued (a quiet table, then a tenant's burst) rate every
--   queued-run index at one row, and the planner read a key's next run by scanning all unfinished
--   runs (workflow_runs_user_unfinished) and sorting them, per key, until the next autoanalyze.
--   Every probe here is an ordered walk of its own index, so seq scans and sorts are off in this
--   function: the one sort left (at most p_window picks) has no alternative. Replanning each call
--   (plan_cache_mode = force_custom_plan) did not help and cost 0.7 ms.

create or replace function conveyor.conveyor_dispatch_runs(p_window integer)
returns setof uuid
language plpgsql
set search_path = conveyor, pg_temp
set enable_seqscan = off
set enable_sort = off
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
   where w.id = any (array(select id from picked))
     -- Still held: a run cancelled after this statement's snapshot is not published.
     and w.status || '' = 'queued' and w.dispatched_at is null
  returning w.id;
end;
$$;

revoke all on function conveyor.conveyor_dispatch_runs(integer) from public, anon, authenticated;
grant execute on function conveyor.conveyor_dispatch_runs(integer) to service_role;
