-- Claiming a run in one round trip. conveyor.runs.claim_run sent BEGIN, four statements (take the
-- run, start its first unfinished step, read the steps, append the `running` event) and COMMIT:
-- six round trips per run, and the run row updated twice (once more to bump last_event_seq).
-- conveyor_claim_run does the same in one call that is its own transaction, bumping the event
-- seq in the claiming update. bench/load.py measures the worker's share of a run.

-- The `workflow_status_update` payload of a run row, exactly as conveyor.runs.status_data builds
-- it in Python (updated_at as datetime.isoformat() writes it);
-- tests/integration/test_runs.py holds the two to the same output.
create function public.conveyor_status_data(r public.workflow_runs) returns jsonb
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
create function public.conveyor_claim_run(p_run uuid, p_lease_seconds integer)
returns table (
  id uuid, user_id uuid, kind text, workflow_id text, input jsonb, attempt integer,
  session_id uuid, started_at timestamptz, steps jsonb, event_seq integer, event_data jsonb,
  event_at timestamptz
)
language plpgsql as $$
#variable_conflict use_column
declare
  v_run public.workflow_runs;
  v_event public.run_events;
begin
  update public.workflow_runs r
     set status = 'running',
         attempt = r.attempt + 1,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         heartbeat_at = now(),
         started_at = coalesce(r.started_at, now()),
         current_step = (select s.name from public.workflow_steps s
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

  update public.workflow_steps s
     set status = 'running', attempt = s.attempt + 1, started_at = now()
   where s.run_id = p_run and s.position = (
     select min(u.position) from public.workflow_steps u
      where u.run_id = p_run and u.status <> 'completed');

  insert into public.run_events (run_id, seq, event, data)
  values (p_run, v_run.last_event_seq, 'workflow_status_update',
          public.conveyor_status_data(v_run))
  returning * into v_event;

  return query
  select v_run.id, v_run.user_id, v_run.kind, v_run.workflow_id, v_run.input, v_run.attempt,
         v_run.session_id, v_run.started_at,
         coalesce((select jsonb_agg(jsonb_build_object(
                     'position', s.position, 'name', s.name, 'status', s.status,
                     'attempt', s.attempt, 'output', s.output, 'output_url', s.output_url)
                     order by s.position)
                     from public.workflow_steps s where s.run_id = p_run), '[]'),
         v_event.seq, v_event.data, v_event.created_at;
end
$$;

revoke all on function public.conveyor_status_data(public.workflow_runs),
  public.conveyor_claim_run(uuid, integer) from public;
grant execute on function public.conveyor_status_data(public.workflow_runs),
  public.conveyor_claim_run(uuid, integer) to service_role;
