-- Forgetting a user: every Conveyor row that belongs to them goes, in one transaction. Conveyor
-- keeps no foreign key to auth.users (development tokens name users that exist nowhere, and a
-- guest does not alter the host's tables), so the purge is a function: the host calls it from a
-- trigger on auth.users that it creates itself, once, as postgres (docs/operations.md):
--
--   create trigger conveyor_forget_deleted_user after delete on auth.users
--     for each row execute function conveyor.forget_deleted_auth_user();
--
-- or an operator runs `conveyor users forget USER_ID`. Calling it again deletes nothing more.
--
-- Runs in flight: a worker holding a run of the user stops at its next lease renewal, cancel
-- check or checkpoint. Each of those writes is fenced on the run row (`where id = … and
-- attempt = …`), finds no row, and the worker ends the attempt as lease lost, writing nothing.
--
-- Kept on purpose:
-- * stripe_events, the Stripe inbox: it is also the record of which events arrived. Deleting
--   one would make the reconciler fetch it again from Stripe's API and apply it again, giving the
--   forgotten user a new account. Payment data lives in Stripe; delete the customer there.
-- * audit_logs entries the user made (see below).

create function conveyor.forget_user(p_user_id uuid) returns jsonb
language plpgsql security definer
-- Pinned: the function runs with its owner's rights, whoever calls it (a trigger fired by
-- Supabase Auth's supabase_auth_admin, the CLI), so no caller's search_path may redirect a name.
set search_path = conveyor, pg_temp
as $$
declare
  v_counts jsonb := '{}'::jsonb;
  v_rows bigint;
begin
  if p_user_id is null then
    raise exception 'forget_user needs a user id' using errcode = 'null_value_not_allowed';
  end if;

  -- First the rows that make more rows. Locking the user's runs makes a worker's checkpoint or
  -- lease renewal (which updates the run row first) wait for this transaction and then find
  -- nothing; one that got there first commits before we go on, and what it wrote (events, usage,
  -- credits) is deleted by the statements below, each of which sees it.
  perform 1 from conveyor.workflow_runs where user_id = p_user_id order by id for update;

  delete from conveyor.run_events e using conveyor.workflow_runs r
   where r.user_id = p_user_id and e.run_id = r.id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('run_events', v_rows);

  delete from conveyor.workflow_steps s using conveyor.workflow_runs r
   where r.user_id = p_user_id and s.run_id = r.id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('workflow_steps', v_rows);

  delete from conveyor.workflow_runs where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('workflow_runs', v_rows);

  -- Usage batches not recorded yet would give the user usage, credits and an account again.
  -- A batch may carry several users' events: the user's are taken out and the rest stay; a batch
  -- of only theirs goes. The count is of events, not batches.
  with named as (
    select b.id,
           json_agg(e.event order by e.n)
             filter (where (e.event ->> 'user_id')::uuid <> p_user_id) as kept,
           count(*) filter (where (e.event ->> 'user_id')::uuid = p_user_id) as theirs
      from conveyor.usage_batches b
     cross join lateral json_array_elements(b.events) with ordinality as e(event, n)
     group by b.id
    having bool_or((e.event ->> 'user_id')::uuid = p_user_id)
  ), emptied as (
    delete from conveyor.usage_batches b using named
     where b.id = named.id and named.kept is null
    returning named.theirs
  ), trimmed as (
    update conveyor.usage_batches b
       set events = named.kept, event_count = json_array_length(named.kept)
      from named
     where b.id = named.id and named.kept is not null
    returning named.theirs
  )
  select coalesce(sum(theirs), 0)
    into v_rows
    from (select theirs from emptied union all select theirs from trimmed) as done;
  v_counts := v_counts || jsonb_build_object('usage_batch_events', v_rows);

  delete from conveyor.agent_messages m using conveyor.agent_sessions s
   where s.user_id = p_user_id and m.session_id = s.id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('agent_messages', v_rows);

  delete from conveyor.agent_sessions where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('agent_sessions', v_rows);

  delete from conveyor.runs_per_day where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('runs_per_day', v_rows);

  delete from conveyor.usage_events where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('usage_events', v_rows);

  delete from conveyor.usage_daily where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('usage_daily', v_rows);

  delete from conveyor.usage_periods where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('usage_periods', v_rows);

  delete from conveyor.credit_transactions where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('credit_transactions', v_rows);

  delete from conveyor.stripe_payments where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('stripe_payments', v_rows);

  delete from conveyor.user_subscriptions where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('user_subscriptions', v_rows);

  -- The account also holds the user's Stripe customer id (the customer mapping).
  delete from conveyor.user_accounts where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('user_accounts', v_rows);

  delete from conveyor.notifications where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('notifications', v_rows);

  delete from conveyor.notification_counters where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('notification_counters', v_rows);

  -- A delivery a worker is sending meanwhile records nothing: its write is fenced on the row.
  delete from conveyor.webhook_delivery_attempts a using conveyor.webhook_deliveries d
   where d.user_id = p_user_id and a.delivery_id = d.id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('webhook_delivery_attempts', v_rows);

  delete from conveyor.webhook_deliveries where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('webhook_deliveries', v_rows);

  delete from conveyor.webhook_events where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('webhook_events', v_rows);

  delete from conveyor.webhook_endpoints where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('webhook_endpoints', v_rows);

  delete from conveyor.webhook_signing_secrets where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('webhook_signing_secrets', v_rows);

  -- Memberships go; the user's personal tenant goes whole. Other tenants stay for their members.
  delete from conveyor.tenant_members where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('tenant_members', v_rows);

  delete from conveyor.tenants where personal_owner = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('tenants', v_rows);

  delete from conveyor.user_roles where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('user_roles', v_rows);

  delete from conveyor.profiles where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('profiles', v_rows);

  -- Audit entries the user made are kept with the actor, address and browser cleared rather than
  -- deleted: the trail records what happened to others too (an admin who cancelled someone's run
  -- or granted them credits), which must not vanish with the admin, and entries age out with
  -- AUDIT_LOGS_RETENTION_DAYS anyway. Entries naming the user only as a subject stay as they
  -- are: with every other row of theirs gone, the bare id points at no one.
  update conveyor.audit_logs set actor_user_id = null, ip = null, user_agent = null
   where actor_user_id = p_user_id;
  get diagnostics v_rows = row_count;
  v_counts := v_counts || jsonb_build_object('audit_logs_anonymized', v_rows);

  return v_counts;
end
$$;

-- For `after delete on auth.users for each row`: forget the deleted user. Security definer so
-- it runs as Conveyor's owner, not as supabase_auth_admin, which may not touch schema conveyor.
create function conveyor.forget_deleted_auth_user() returns trigger
language plpgsql security definer
set search_path = conveyor, pg_temp
as $$
begin
  perform conveyor.forget_user(old.id);
  return old;
end
$$;

-- forget_user is for the service role; the trigger function only for its trigger, which its
-- owner (the host's postgres) creates: Postgres checks EXECUTE when the trigger is created, not
-- when it fires, so no role needs it (the schema's default privileges had given it to
-- service_role).
revoke all on function conveyor.forget_user(uuid) from public, anon, authenticated;
grant execute on function conveyor.forget_user(uuid) to service_role;
revoke all on function conveyor.forget_deleted_auth_user()
  from public, anon, authenticated, service_role;
