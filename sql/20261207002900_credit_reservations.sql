-- Credit reservations (issue 24): before a model call the engine holds its worst case (prompt
-- bound + max_tokens at the model's price) against the user's credits and this month's quota;
-- the step's checkpoint settles the real cost and releases the hold; a failed attempt, a retry
-- or a run's end releases it. The held sums live beside what they limit (user_accounts,
-- usage_periods) and every change takes the period row before the account row, as admit_run
-- and record_usage do, so concurrent reservations queue on the same two rows and together never
-- promise more than `balance` credits or the quota.

alter table conveyor.user_accounts
  add column reserved_credits bigint not null default 0 check (reserved_credits >= 0);
alter table conveyor.usage_periods
  add column reserved_tokens bigint not null default 0 check (reserved_tokens >= 0),
  add column reserved_cost_micro_usd bigint not null default 0
    check (reserved_cost_micro_usd >= 0);

create table conveyor.credit_reservations (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  run_id uuid not null,
  -- The run's claim that made it: a hold of an earlier claim is stale (the sweep releases it).
  run_attempt integer not null,
  position integer not null,
  item integer not null default -1, -- -1: the step itself, else the map item
  attempt integer not null,
  period_start date not null,
  model text not null,
  credits bigint not null check (credits >= 0),
  tokens bigint not null check (tokens >= 0),
  cost_micro_usd bigint not null check (cost_micro_usd >= 0),
  -- The rate the hold was priced at; its settlement charges the real cost at the same rate.
  credits_per_usd bigint not null check (credits_per_usd >= 0),
  created_at timestamptz not null default now(),
  -- The claim is part of the key: a hold an earlier claim left behind is never taken for this
  -- claim's (the sweep releases it while this one stays).
  constraint credit_reservations_key unique (run_id, position, item, run_attempt, attempt)
);

create index credit_reservations_user on conveyor.credit_reservations (user_id);
create index credit_reservations_created on conveyor.credit_reservations (created_at);

-- Workers and the service read and write holds; users never see the table.
alter table conveyor.credit_reservations enable row level security;
revoke all on conveyor.credit_reservations from public, anon, authenticated;
grant all on conveyor.credit_reservations to service_role;

-- Micro-USD of a call: the given costs, else the model's `model_prices` (0 when unpriced).
create function conveyor.conveyor_call_cost(
  p_model text, p_prompt_tokens bigint, p_completion_tokens bigint,
  p_input_cost bigint default null, p_output_cost bigint default null
) returns bigint
language sql stable as $$
  select coalesce(p_input_cost, ceil(p_prompt_tokens::numeric
                  * coalesce(mp.input_per_million_micro_usd, 0) / 1e6)::bigint)
       + coalesce(p_output_cost, ceil(p_completion_tokens::numeric
                  * coalesce(mp.output_per_million_micro_usd, 0) / 1e6)::bigint)
    from (select 1) one
    left join conveyor.model_prices mp on mp.model = p_model
$$;

-- Credits for micro-USD at a rate (credits per USD), rounded up.
create function conveyor.conveyor_cost_credits(p_cost bigint, p_credits_per_usd bigint)
returns bigint
language sql immutable as $$
  select ceil(p_cost::numeric * p_credits_per_usd / 1e6)::bigint
$$;

-- Hold a call's worst case only if `balance - reserved` covers its credits and the month's
-- `used + reserved` stays within both quotas. Reserving the same key again is a no-op (true).
-- `code`: null when held, else INSUFFICIENT_CREDITS or QUOTA_EXCEEDED.
create function conveyor.reserve_credits(
  p_user uuid, p_run uuid, p_run_attempt integer, p_position integer, p_item integer,
  p_attempt integer, p_model text, p_tokens_prompt bigint, p_tokens_completion bigint,
  p_cost bigint, p_credits_per_usd bigint
) returns table (reserved boolean, code text, credits bigint, available bigint)
language plpgsql as $$
declare
  v_period date := conveyor.conveyor_period_start(now());
  v_cost bigint := coalesce(p_cost, conveyor.conveyor_call_cost(
    p_model, p_tokens_prompt, p_tokens_completion));
  v_credits bigint := conveyor.conveyor_cost_credits(v_cost, p_credits_per_usd);
  v_tokens bigint := p_tokens_prompt + p_tokens_completion;
  v_row conveyor.usage_periods;
  v_account conveyor.user_accounts;
begin
  perform conveyor.conveyor_ensure_account(p_user);
  perform conveyor.conveyor_ensure_period(p_user, v_period);
  -- Period before account: the order admit_run and record_usage lock them in.
  select * into v_row from conveyor.usage_periods
   where user_id = p_user and period_start = v_period for update;
  select * into v_account from conveyor.user_accounts where user_id = p_user for update;
  if exists (select 1 from conveyor.credit_reservations
              where run_id = p_run and position = p_position and item = coalesce(p_item, -1)
                and run_attempt = p_run_attempt and attempt = p_attempt) then
    return query select true, null::text, v_credits,
      v_account.credit_balance - v_account.reserved_credits;
    return;
  end if;
  if v_account.credit_balance - v_account.reserved_credits < v_credits then
    return query select false, 'INSUFFICIENT_CREDITS', v_credits,
      v_account.credit_balance - v_account.reserved_credits;
    return;
  end if;
  if v_row.tokens_used + v_row.reserved_tokens + v_tokens > v_row.token_quota
     or v_row.cost_used_micro_usd + v_row.reserved_cost_micro_usd + v_cost
        > v_row.cost_quota_micro_usd then
    return query select false, 'QUOTA_EXCEEDED', v_credits,
      v_account.credit_balance - v_account.reserved_credits;
    return;
  end if;
  insert into conveyor.credit_reservations
    (user_id, run_id, run_attempt, position, item, attempt, period_start, model, credits, tokens,
     cost_micro_usd, credits_per_usd)
  values (p_user, p_run, p_run_attempt, p_position, coalesce(p_item, -1), p_attempt, v_period,
          p_model, v_credits, v_tokens, v_cost, p_credits_per_usd);
  update conveyor.usage_periods
     set reserved_tokens = reserved_tokens + v_tokens,
         reserved_cost_micro_usd = reserved_cost_micro_usd + v_cost
   where user_id = p_user and period_start = v_period;
  update conveyor.user_accounts
     set reserved_credits = reserved_credits + v_credits, updated_at = now()
   where user_id = p_user;
  return query select true, null::text, v_credits,
    v_account.credit_balance - v_account.reserved_credits - v_credits;
end
$$;

-- Release the holds with these ids (already deleted by the caller's statement) from the held
-- sums: periods first, then accounts, each in key order.
create function conveyor.conveyor_unhold(p_released conveyor.credit_reservations[])
returns void
language plpgsql as $$
declare
  v record;
begin
  for v in
    select r.user_id, r.period_start, sum(r.tokens) as tokens, sum(r.cost_micro_usd) as cost
      from unnest(p_released) r group by r.user_id, r.period_start
     order by r.user_id, r.period_start
  loop
    update conveyor.usage_periods
       set reserved_tokens = greatest(0, reserved_tokens - v.tokens),
           reserved_cost_micro_usd = greatest(0, reserved_cost_micro_usd - v.cost)
     where user_id = v.user_id and period_start = v.period_start;
  end loop;
  for v in
    select r.user_id, sum(r.credits) as credits
      from unnest(p_released) r group by r.user_id order by r.user_id
  loop
    update conveyor.user_accounts
       set reserved_credits = greatest(0, reserved_credits - v.credits), updated_at = now()
     where user_id = v.user_id;
  end loop;
end
$$;

-- Release a run's holds: all of them (p_position null), one step's (one map item's), or with
-- p_run_attempt and p_attempt one attempt's only (an attempt that did not complete gives back
-- its own hold, never a later claim's). Returns the rate and model of the released holds (0 and
-- null when none): a settlement charges the real cost at that rate, priced as the hold was.
create function conveyor.release_reservations(
  p_run uuid, p_position integer default null, p_item integer default null,
  p_run_attempt integer default null, p_attempt integer default null
) returns table (rate bigint, model text)
language plpgsql as $$
declare
  v_released conveyor.credit_reservations[];
begin
  -- A hold the sweep has locked is left to it (it releases it): waiting for it could deadlock,
  -- since the sweep goes on to lock the period and account rows this transaction may hold.
  with mine as (
    select c.id from conveyor.credit_reservations c
     where c.run_id = p_run
       and (p_position is null or (c.position = p_position and c.item = coalesce(p_item, -1)))
       and (p_run_attempt is null or c.run_attempt = p_run_attempt)
       and (p_attempt is null or c.attempt = p_attempt)
       for update skip locked
  ), gone as (
    delete from conveyor.credit_reservations c using mine where c.id = mine.id
    returning c.*
  )
  select coalesce(array_agg(gone), '{}') into v_released from gone;
  perform conveyor.conveyor_unhold(v_released);
  return query
    select coalesce(max(r.credits_per_usd), 0)::bigint, max(r.model)
      from unnest(v_released) r;
end
$$;

-- Maintenance: release holds nobody will settle (the run ended, waits, or was claimed again
-- since the hold was made). Safe beside running steps: a hold of the run's current claim stays.
create function conveyor.release_stale_reservations(p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
  v_released conveyor.credit_reservations[];
begin
  with stale as (
    select c.id from conveyor.credit_reservations c
      left join conveyor.workflow_runs r on r.id = c.run_id
     where r.id is null or r.status <> 'running' or r.attempt <> c.run_attempt
     order by c.id
     limit p_limit
       for update of c skip locked
  ), gone as (
    delete from conveyor.credit_reservations c using stale where c.id = stale.id returning c.*
  )
  select coalesce(array_agg(gone), '{}') into v_released from gone;
  perform conveyor.conveyor_unhold(v_released);
  return coalesce(array_length(v_released, 1), 0);
end
$$;

revoke all on function conveyor.reserve_credits(uuid, uuid, integer, integer, integer, integer,
  text, bigint, bigint, bigint, bigint) from public, anon, authenticated;
revoke all on function conveyor.release_reservations(uuid, integer, integer, integer, integer)
  from public, anon, authenticated;
revoke all on function conveyor.release_stale_reservations(integer)
  from public, anon, authenticated;
revoke all on function conveyor.conveyor_unhold(conveyor.credit_reservations[])
  from public, anon, authenticated;
revoke all on function conveyor.conveyor_call_cost(text, bigint, bigint, bigint, bigint)
  from public, anon, authenticated;
revoke all on function conveyor.conveyor_cost_credits(bigint, bigint)
  from public, anon, authenticated;
revoke all on type conveyor.credit_reservations from public, anon, authenticated;

-- Erasure forgets the user's holds too: forget_user (as 002700 states it) becomes
-- forget_user_before_reservations, wrapped by a forget_user that deletes the holds first.
alter function conveyor.forget_user(uuid) rename to forget_user_before_reservations;
revoke all on function conveyor.forget_user_before_reservations(uuid)
  from public, anon, authenticated, service_role;

create function conveyor.forget_user(p_user_id uuid) returns jsonb
language plpgsql security definer
set search_path = conveyor, pg_temp
as $$
declare
  v_rows bigint;
  v_result jsonb;
begin
  if p_user_id is null then
    raise exception 'forget_user needs a user id' using errcode = 'null_value_not_allowed';
  end if;
  -- After the runs are forgotten (the inner function locks them first, as a worker's checkpoint
  -- does before it settles a hold), so the two never wait for each other in opposite orders.
  v_result := conveyor.forget_user_before_reservations(p_user_id);
  delete from conveyor.credit_reservations where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  return v_result || jsonb_build_object('credit_reservations', v_rows);
end
$$;

revoke all on function conveyor.forget_user(uuid) from public, anon, authenticated;
grant execute on function conveyor.forget_user(uuid) to service_role;

-- Credits held for model calls are promised: a debit that is a choice (a run's admission, an
-- endpoint's rate) may take only what is free, `balance - reserved`. A settlement may (it has
-- released its own hold first), and so may what already happened (usage, a refund's take-back),
-- as far as the balance goes. admit_run as 000600 states it keeps its body under another name,
-- wrapped by a check of the job's rate against the free credits; deduct_credits checks them.
alter function conveyor.admit_run(uuid, uuid, text) rename to admit_run_unreserved;
revoke all on function conveyor.admit_run_unreserved(uuid, uuid, text)
  from public, anon, authenticated, service_role;

create function conveyor.admit_run(p_user uuid, p_run uuid, p_job text)
returns table (code text, retry_after integer, resets_at timestamptz, credits_charged bigint,
               credit_balance bigint)
language plpgsql security definer
set search_path = conveyor, pg_temp
as $$
declare
  v_account conveyor.user_accounts;
  v_rate bigint;
begin
  perform conveyor.conveyor_ensure_account(p_user);
  -- Period before account, as the wrapped function and record_usage take them.
  perform conveyor.conveyor_ensure_period(p_user, conveyor.conveyor_period_start(now()));
  select * into v_account from conveyor.user_accounts a where a.user_id = p_user for update;
  if v_account.reserved_credits > 0 then
    select r.credits into v_rate from conveyor.credit_rates r
     where r.endpoint in (p_job, split_part(p_job, ':', 1) || ':*')
     order by r.endpoint = p_job desc
     limit 1;
    if coalesce(v_rate, 0) > v_account.credit_balance - v_account.reserved_credits then
      return query select 'INSUFFICIENT_CREDITS', null::integer, null::timestamptz, v_rate,
        v_account.credit_balance - v_account.reserved_credits;
      return;
    end if;
  end if;
  return query select * from conveyor.admit_run_unreserved(p_user, p_run, p_job);
end
$$;

revoke all on function conveyor.admit_run(uuid, uuid, text) from public, anon, authenticated;
grant execute on function conveyor.admit_run(uuid, uuid, text) to service_role;

create or replace function conveyor.deduct_credits(
  p_user uuid, p_amount bigint, p_kind text default 'usage', p_description text default null,
  p_reference text default null, p_endpoint text default null
) returns table (balance bigint, applied boolean)
language plpgsql as $$
declare
  v_account conveyor.user_accounts;
begin
  if p_amount <= 0 then
    raise exception 'amount must be positive' using errcode = '22023';
  end if;
  perform conveyor.conveyor_ensure_account(p_user);
  select * into v_account from conveyor.user_accounts a where a.user_id = p_user for update;
  if p_amount > v_account.credit_balance - v_account.reserved_credits then
    return query select v_account.credit_balance, false;
    return;
  end if;
  return query select * from conveyor.conveyor_move_credits(
    p_user, -p_amount, p_kind, p_description, p_reference, p_endpoint);
end
$$;
