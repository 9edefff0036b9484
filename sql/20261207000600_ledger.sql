-- Plans, accounts, monthly usage periods, usage events and the credit ledger, with the rules that
-- keep them exact under concurrency. Amounts are integers: tokens, micro-USD, credits.
-- Periods are calendar months in UTC.

create table conveyor.plans (
  id text primary key check (id ~ '^[a-z][a-z0-9_]{0,31}$'),
  name text not null,
  monthly_token_quota bigint not null check (monthly_token_quota >= 0),
  monthly_cost_quota_micro_usd bigint not null check (monthly_cost_quota_micro_usd >= 0),
  daily_request_limit integer not null check (daily_request_limit >= 0),
  max_concurrent_runs integer not null check (max_concurrent_runs >= 0),
  monthly_credit_grant bigint not null default 0 check (monthly_credit_grant >= 0)
);

insert into conveyor.plans values
  ('free', 'Free', 200000, 2000000, 200, 5, 100),
  ('basic', 'Basic', 2000000, 20000000, 1000, 5, 1000),
  ('premium', 'Premium', 10000000, 100000000, 10000, 20, 5000),
  ('enterprise', 'Enterprise', 100000000, 1000000000, 100000, 100, 50000);

create table conveyor.user_accounts (
  user_id uuid primary key,
  plan_id text not null default 'free' references conveyor.plans (id),
  credit_balance bigint not null default 0 check (credit_balance >= 0),
  stripe_customer_id text unique,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table conveyor.usage_periods (
  user_id uuid not null,
  period_start date not null check (extract(day from period_start) = 1),
  token_quota bigint not null check (token_quota >= 0),
  cost_quota_micro_usd bigint not null check (cost_quota_micro_usd >= 0),
  tokens_used bigint not null default 0 check (tokens_used >= 0),
  cost_used_micro_usd bigint not null default 0 check (cost_used_micro_usd >= 0),
  requests_used bigint not null default 0 check (requests_used >= 0),
  -- The highest quota threshold (0, 80, 100 percent) already notified for this period.
  notified_percent smallint not null default 0 check (notified_percent in (0, 80, 100)),
  created_at timestamptz not null default now(),
  primary key (user_id, period_start)
);

create table conveyor.usage_events (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  idempotency_key text not null check (char_length(idempotency_key) between 1 and 255),
  provider text not null check (char_length(provider) between 1 and 100),
  model text not null check (char_length(model) between 1 and 200),
  agent_mode text,
  prompt_tokens integer not null check (prompt_tokens >= 0),
  completion_tokens integer not null check (completion_tokens >= 0),
  input_cost_micro_usd bigint not null check (input_cost_micro_usd >= 0),
  output_cost_micro_usd bigint not null check (output_cost_micro_usd >= 0),
  latency_ms integer check (latency_ms >= 0),
  run_id uuid,
  step_position integer,
  session_id uuid,
  success boolean not null default true,
  error text,
  credits_charged bigint not null default 0 check (credits_charged >= 0),
  occurred_at timestamptz not null default now(),
  recorded_at timestamptz not null default now(),
  constraint usage_events_user_key unique (user_id, idempotency_key)
);

create index usage_events_user_occurred on conveyor.usage_events (user_id, occurred_at desc, id desc);
-- Retention deletes find old usage events by time alone.
create index usage_events_occurred on conveyor.usage_events (occurred_at);

create table conveyor.credit_transactions (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  amount bigint not null check (amount <> 0),
  balance_after bigint not null check (balance_after >= 0),
  kind text not null check (kind in ('purchase', 'grant', 'usage', 'refund', 'adjustment')),
  description text,
  endpoint text,
  -- What this movement is for (a run, a Stripe session, a period grant): applied once.
  reference text unique,
  created_at timestamptz not null default now()
);

create index credit_transactions_user_created
  on conveyor.credit_transactions (user_id, created_at desc, id desc);
-- Analytics over all users (admins) read purchases by time.
create index credit_transactions_created on conveyor.credit_transactions (created_at)
  where kind = 'purchase';

-- Credits one request costs, by job: `agent:<type>`, `workflow:<id>`, or the `agent:*` and
-- `workflow:*` fallbacks.
create table conveyor.credit_rates (
  endpoint text primary key,
  credits bigint not null check (credits >= 0),
  description text not null default ''
);

insert into conveyor.credit_rates values
  ('agent:*', 1, 'Each agent invocation'),
  ('workflow:*', 2, 'Each workflow run'),
  ('agent:echo', 0, 'The echo smoke test is free');

create table conveyor.model_prices (
  model text primary key,
  provider text not null default 'openai',
  input_per_million_micro_usd bigint not null check (input_per_million_micro_usd >= 0),
  output_per_million_micro_usd bigint not null check (output_per_million_micro_usd >= 0)
);

insert into conveyor.model_prices (model, input_per_million_micro_usd, output_per_million_micro_usd)
values
  ('gpt-4o-mini', 150000, 600000),
  ('gpt-4o', 2500000, 10000000),
  ('gpt-4.1-mini', 400000, 1600000),
  ('gpt-4.1', 2000000, 8000000);

-- The first day of the UTC month containing `at`.
create function conveyor.conveyor_period_start(at timestamptz) returns date
language sql immutable as $$
  select date_trunc('month', at at time zone 'UTC')::date
$$;

-- The user's account, created on the free plan when missing; a new account gets this month's
-- plan credits at once (granted once per period, like the monthly reset).
create function conveyor.conveyor_ensure_account(p_user uuid) returns void
language plpgsql as $$
begin
  insert into conveyor.user_accounts (user_id) values (p_user) on conflict (user_id) do nothing;
  if found then
    perform conveyor.conveyor_grant_period_credits(p_user, conveyor.conveyor_period_start(now()));
  end if;
end
$$;

-- The user's usage period for a month, opened with the plan's limits when missing. Opening the
-- current month's period grants the plan's monthly credits (once: the grant has a reference), so
-- credits renew on a user's first activity of a month even without the scheduled reset.
create function conveyor.conveyor_ensure_period(p_user uuid, p_period date) returns void
language plpgsql as $$
begin
  insert into conveyor.usage_periods (user_id, period_start, token_quota, cost_quota_micro_usd)
  select p_user, p_period, p.monthly_token_quota, p.monthly_cost_quota_micro_usd
    from conveyor.user_accounts a join conveyor.plans p on p.id = a.plan_id
   where a.user_id = p_user
  on conflict (user_id, period_start) do nothing;
  if found and p_period = conveyor.conveyor_period_start(now()) then
    perform conveyor.conveyor_grant_period_credits(p_user, p_period);
  end if;
end
$$;

-- Consume tokens and cost from this month's quota only if both fit: one conditional update, so
-- concurrent callers can never together exceed the limit.
create function conveyor.check_and_consume_quota(p_user uuid, p_tokens bigint, p_cost bigint)
returns boolean
language plpgsql as $$
declare
  v_period date := conveyor.conveyor_period_start(now());
begin
  if p_tokens < 0 or p_cost < 0 then
    raise exception 'tokens and cost must not be negative' using errcode = '22023';
  end if;
  perform conveyor.conveyor_ensure_account(p_user);
  perform conveyor.conveyor_ensure_period(p_user, v_period);
  update conveyor.usage_periods
     set tokens_used = tokens_used + p_tokens,
         cost_used_micro_usd = cost_used_micro_usd + p_cost,
         requests_used = requests_used + 1
   where user_id = p_user and period_start = v_period
     and tokens_used + p_tokens <= token_quota
     and cost_used_micro_usd + p_cost <= cost_quota_micro_usd;
  return found;
end
$$;

-- Move credits (delta > 0 adds, < 0 takes) once per reference, never below zero. The account row
-- is locked first, so balance_after follows the order of movements. Returns the balance and
-- whether this call moved anything.
create function conveyor.conveyor_move_credits(
  p_user uuid, p_delta bigint, p_kind text, p_description text, p_reference text,
  p_endpoint text
) returns table (balance bigint, applied boolean)
language plpgsql as $$
declare
  v_balance bigint;
begin
  perform conveyor.conveyor_ensure_account(p_user);
  select credit_balance into v_balance from conveyor.user_accounts
   where user_id = p_user for update;
  if v_balance + p_delta < 0 or (p_reference is not null and exists (
    select 1 from conveyor.credit_transactions where reference = p_reference
  )) then
    return query select v_balance, false;
    return;
  end if;
  update conveyor.user_accounts
     set credit_balance = credit_balance + p_delta, updated_at = now()
   where user_id = p_user
  returning credit_balance into v_balance;
  -- clock_timestamp(), not now(): taken after the lock, so time order is balance order.
  insert into conveyor.credit_transactions
    (user_id, amount, balance_after, kind, description, endpoint, reference, created_at)
  values (p_user, p_delta, v_balance, p_kind, p_description, p_endpoint, p_reference,
          clock_timestamp());
  return query select v_balance, true;
end
$$;

-- Add credits once per reference; returns the balance and whether this call applied them.
create function conveyor.add_credits(
  p_user uuid, p_amount bigint, p_kind text, p_description text default null,
  p_reference text default null, p_endpoint text default null
) returns table (balance bigint, applied boolean)
language plpgsql as $$
begin
  if p_amount <= 0 then
    raise exception 'amount must be positive' using errcode = '22023';
  end if;
  return query select * from conveyor.conveyor_move_credits(
    p_user, p_amount, p_kind, p_description, p_reference, p_endpoint);
end
$$;

-- Take credits only if the balance covers them (never below zero); once per reference.
create function conveyor.deduct_credits(
  p_user uuid, p_amount bigint, p_kind text default 'usage', p_description text default null,
  p_reference text default null, p_endpoint text default null
) returns table (balance bigint, applied boolean)
language plpgsql as $$
begin
  if p_amount <= 0 then
    raise exception 'amount must be positive' using errcode = '22023';
  end if;
  return query select * from conveyor.conveyor_move_credits(
    p_user, -p_amount, p_kind, p_description, p_reference, p_endpoint);
end
$$;

-- Record one AI request exactly once: insert the event (a repeated key returns the original and
-- charges nothing), add it to the month's usage, debit credits as far as the balance goes, and
-- say which quota threshold (80 or 100 percent) this event crossed first in its period.
create function conveyor.record_usage(
  p_user uuid,
  p_idempotency_key text,
  p_provider text,
  p_model text,
  p_prompt_tokens integer,
  p_completion_tokens integer,
  p_input_cost bigint default null,
  p_output_cost bigint default null,
  p_agent_mode text default null,
  p_latency_ms integer default null,
  p_run_id uuid default null,
  p_step_position integer default null,
  p_session_id uuid default null,
  p_success boolean default true,
  p_error text default null,
  p_credits bigint default 0,
  p_occurred_at timestamptz default now()
) returns table (
  event_id bigint, duplicate boolean, credits_charged bigint, threshold_crossed smallint
)
language plpgsql as $$
declare
  v_price conveyor.model_prices;
  v_input bigint := p_input_cost;
  v_output bigint := p_output_cost;
  v_event bigint;
  v_period date := conveyor.conveyor_period_start(p_occurred_at);
  v_row conveyor.usage_periods;
  v_percent smallint;
  v_balance bigint;
  v_charged bigint := 0;
  v_applied boolean;
begin
  if v_input is null or v_output is null then
    select * into v_price from conveyor.model_prices where model = p_model;
    v_input := coalesce(v_input, ceil(p_prompt_tokens::numeric
                                      * coalesce(v_price.input_per_million_micro_usd, 0) / 1e6));
    v_output := coalesce(v_output, ceil(p_completion_tokens::numeric
                                        * coalesce(v_price.output_per_million_micro_usd, 0) / 1e6));
  end if;
  insert into conveyor.usage_events
    (user_id, idempotency_key, provider, model, agent_mode, prompt_tokens, completion_tokens,
     input_cost_micro_usd, output_cost_micro_usd, latency_ms, run_id, step_position, session_id,
     success, error, occurred_at)
  values
    (p_user, p_idempotency_key, p_provider, p_model, p_agent_mode, p_prompt_tokens,
     p_completion_tokens, v_input, v_output, p_latency_ms, p_run_id, p_step_position,
     p_session_id, p_success, p_error, p_occurred_at)
  on conflict (user_id, idempotency_key) do nothing
  returning id into v_event;
  if v_event is null then
    return query
      select e.id, true, e.credits_charged, 0::smallint
        from conveyor.usage_events e
       where e.user_id = p_user and e.idempotency_key = p_idempotency_key;
    return;
  end if;

  perform conveyor.conveyor_ensure_account(p_user);
  perform conveyor.conveyor_ensure_period(p_user, v_period);
  -- Usage already happened: it is always counted (the next submit is what a full quota refuses).
  update conveyor.usage_periods
     set tokens_used = tokens_used + p_prompt_tokens + p_completion_tokens,
         cost_used_micro_usd = cost_used_micro_usd + v_input + v_output,
         requests_used = requests_used + 1
   where user_id = p_user and period_start = v_period
  returning * into v_row;
  v_percent := case
    when v_row.tokens_used >= v_row.token_quota
      or v_row.cost_used_micro_usd >= v_row.cost_quota_micro_usd then 100
    when v_row.tokens_used * 5 >= v_row.token_quota * 4
      or v_row.cost_used_micro_usd * 5 >= v_row.cost_quota_micro_usd * 4 then 80
    else 0 end;
  if v_percent > v_row.notified_percent then
    update conveyor.usage_periods set notified_percent = v_percent
     where user_id = p_user and period_start = v_period;
  else
    v_percent := 0;
  end if;

  if p_credits > 0 then
    select credit_balance into v_balance from conveyor.user_accounts
     where user_id = p_user for update;
    -- The call already happened: take what the balance covers, never below zero.
    v_charged := least(v_balance, p_credits);
    if v_charged > 0 then
      select m.applied into v_applied from conveyor.conveyor_move_credits(
        p_user, -v_charged, 'usage', 'AI usage: ' || p_model, 'usage:' || v_event, p_agent_mode) m;
      v_charged := case when v_applied then v_charged else 0 end;
      update conveyor.usage_events set credits_charged = v_charged where id = v_event;
    end if;
  end if;
  return query select v_event, false, v_charged, v_percent;
end
$$;

-- Grant the plan's monthly credits for a period, once (the reference is per user and period).
-- Plan credits of a subscriber come with each paid invoice (invoice.paid, once per invoice);
-- the month's opening grant is for users without a live subscription, so nobody is paid twice.
create or replace function conveyor.conveyor_grant_period_credits(p_user uuid, p_period date)
returns boolean
language plpgsql as $$
declare
  v_grant bigint;
  v_applied boolean := false;
begin
  if exists (select 1 from conveyor.user_subscriptions s
              where s.user_id = p_user and s.status in ('active', 'trialing', 'past_due')) then
    return false;
  end if;
  select p.monthly_credit_grant into v_grant
    from conveyor.user_accounts a join conveyor.plans p on p.id = a.plan_id
   where a.user_id = p_user;
  if v_grant > 0 then
    select r.applied into v_applied from conveyor.add_credits(
      p_user, v_grant, 'grant', 'Monthly plan credits', 'grant:' || p_user || ':' || p_period) r;
  end if;
  return v_applied;
end
$$;

-- Open the user's period for a month with the plan's limits and grant the plan's monthly credits
-- once per period. Returns whether credits were granted by this call.
create function conveyor.reset_period(p_user uuid, p_period date) returns boolean
language plpgsql as $$
declare
  v_period date := conveyor.conveyor_period_start(p_period);
begin
  perform conveyor.conveyor_ensure_account(p_user);
  perform conveyor.conveyor_ensure_period(p_user, v_period);
  return conveyor.conveyor_grant_period_credits(p_user, v_period);
end
$$;

-- Limits, use and what remains this month; requests today and runs in flight.
create function conveyor.get_remaining_quota(p_user uuid) returns table (
  plan_id text, period_start date, resets_at timestamptz,
  token_quota bigint, tokens_used bigint, tokens_remaining bigint,
  cost_quota_micro_usd bigint, cost_used_micro_usd bigint, cost_remaining_micro_usd bigint,
  daily_request_limit integer, requests_today bigint,
  max_concurrent_runs integer, runs_in_flight bigint, credit_balance bigint
)
language plpgsql as $$
declare
  v_period date := conveyor.conveyor_period_start(now());
begin
  perform conveyor.conveyor_ensure_account(p_user);
  perform conveyor.conveyor_ensure_period(p_user, v_period);
  return query
    select a.plan_id, u.period_start,
           ((u.period_start + interval '1 month')::timestamp at time zone 'UTC'),
           u.token_quota, u.tokens_used, greatest(u.token_quota - u.tokens_used, 0),
           u.cost_quota_micro_usd, u.cost_used_micro_usd,
           greatest(u.cost_quota_micro_usd - u.cost_used_micro_usd, 0),
           p.daily_request_limit,
           (select count(*) from conveyor.workflow_runs r
             where r.user_id = p_user
               and r.created_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'),
           p.max_concurrent_runs,
           (select count(*) from conveyor.workflow_runs r
             where r.user_id = p_user and r.status in ('queued', 'running')),
           a.credit_balance
      from conveyor.user_accounts a
      join conveyor.plans p on p.id = a.plan_id
      join conveyor.usage_periods u on u.user_id = a.user_id and u.period_start = v_period
     where a.user_id = p_user;
end
$$;

-- Admit a new run for a user, or say why not; with the account row locked, so concurrent
-- submits are counted exactly. Credits for the job are taken here, in the submit's transaction.
-- code: null (admitted), RATE_LIMITED, CONCURRENCY_LIMIT, QUOTA_EXCEEDED, INSUFFICIENT_CREDITS.
create function conveyor.admit_run(p_user uuid, p_run uuid, p_job text)
returns table (code text, retry_after integer, resets_at timestamptz, credits_charged bigint,
               credit_balance bigint)
language plpgsql as $$
declare
  v_account conveyor.user_accounts;
  v_plan conveyor.plans;
  v_period conveyor.usage_periods;
  v_day_start timestamptz := date_trunc('day', now() at time zone 'UTC') at time zone 'UTC';
  v_rate bigint;
  v_count bigint;
  v_balance bigint;
begin
  perform conveyor.conveyor_ensure_account(p_user);
  -- Period before account, the order record_usage takes them in: no deadlock between the two.
  perform conveyor.conveyor_ensure_period(p_user, conveyor.conveyor_period_start(now()));
  select * into v_account from conveyor.user_accounts where user_id = p_user for update;
  select * into v_plan from conveyor.plans where id = v_account.plan_id;

  -- Today's runs before this one (its own insert is already counted).
  select coalesce(sum(c.runs), 0)
           - (select count(*) from conveyor.workflow_runs r
               where r.id = p_run and r.created_at >= v_day_start)
    into v_count
    from conveyor.runs_per_day c
   where c.user_id = p_user and c.day = (v_day_start at time zone 'UTC')::date;
  if v_count >= v_plan.daily_request_limit then
    return query select 'RATE_LIMITED', ceil(extract(epoch from
      v_day_start + interval '1 day' - now()))::integer, v_day_start + interval '1 day',
      0::bigint, v_account.credit_balance;
    return;
  end if;

  select count(*) into v_count from conveyor.workflow_runs r
   where r.user_id = p_user and r.status in ('queued', 'running') and r.id <> p_run;
  if v_count >= v_plan.max_concurrent_runs then
    return query select 'CONCURRENCY_LIMIT', 5, null::timestamptz, 0::bigint,
      v_account.credit_balance;
    return;
  end if;

  select * into v_period from conveyor.usage_periods
   where user_id = p_user and period_start = conveyor.conveyor_period_start(now());
  if v_period.tokens_used >= v_period.token_quota
     or v_period.cost_used_micro_usd >= v_period.cost_quota_micro_usd then
    return query select 'QUOTA_EXCEEDED',
      ceil(extract(epoch from (v_period.period_start + interval '1 month')::timestamp
                              at time zone 'UTC' - now()))::integer,
      (v_period.period_start + interval '1 month')::timestamp at time zone 'UTC',
      0::bigint, v_account.credit_balance;
    return;
  end if;

  select r.credits into v_rate from conveyor.credit_rates r
   where r.endpoint in (p_job, split_part(p_job, ':', 1) || ':*')
   order by r.endpoint = p_job desc
   limit 1;
  v_rate := coalesce(v_rate, 0);
  if v_rate > v_account.credit_balance then
    return query select 'INSUFFICIENT_CREDITS', null::integer, null::timestamptz, v_rate,
      v_account.credit_balance;
    return;
  end if;
  v_balance := v_account.credit_balance;
  if v_rate > 0 then
    select m.balance into v_balance from conveyor.conveyor_move_credits(
      p_user, -v_rate, 'usage', 'Run ' || p_run, 'run:' || p_run, p_job) m;
  end if;
  return query select null::text, null::integer, null::timestamptz, v_rate, v_balance;
end
$$;

-- What a user did over the last p_days: totals, by model, by day.
create function conveyor.get_user_activity_summary(p_user uuid, p_days integer)
returns jsonb
language sql stable as $$
  with recent as (
    select * from conveyor.usage_events
     where user_id = p_user and occurred_at >= now() - make_interval(days => p_days)
  )
  select jsonb_build_object(
    'days', p_days,
    'totals', (select jsonb_build_object(
        'requests', count(*),
        'prompt_tokens', coalesce(sum(prompt_tokens), 0),
        'completion_tokens', coalesce(sum(completion_tokens), 0),
        'cost_micro_usd', coalesce(sum(input_cost_micro_usd + output_cost_micro_usd), 0),
        'failed', count(*) filter (where not success)) from recent),
    'by_model', coalesce((select jsonb_agg(m order by m.model) from (
        select model, count(*) as requests,
               sum(prompt_tokens + completion_tokens) as tokens,
               sum(input_cost_micro_usd + output_cost_micro_usd) as cost_micro_usd
          from recent group by model) m), '[]'::jsonb),
    'by_day', coalesce((select jsonb_agg(d order by d.date) from (
        select (occurred_at at time zone 'UTC')::date as date, count(*) as requests,
               sum(prompt_tokens + completion_tokens) as tokens,
               sum(input_cost_micro_usd + output_cost_micro_usd) as cost_micro_usd
          from recent group by 1) d), '[]'::jsonb))
$$;

alter table conveyor.plans enable row level security;
alter table conveyor.user_accounts enable row level security;
alter table conveyor.usage_periods enable row level security;
alter table conveyor.usage_events enable row level security;
alter table conveyor.credit_transactions enable row level security;
alter table conveyor.credit_rates enable row level security;
alter table conveyor.model_prices enable row level security;

create policy plans_read on conveyor.plans for select to authenticated using (true);
create policy credit_rates_read on conveyor.credit_rates for select to authenticated using (true);
create policy model_prices_read on conveyor.model_prices for select to authenticated using (true);
create policy user_accounts_owner_or_admin_select on conveyor.user_accounts
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());
create policy usage_periods_owner_or_admin_select on conveyor.usage_periods
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());
create policy usage_events_owner_or_admin_select on conveyor.usage_events
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());
create policy credit_transactions_owner_or_admin_select on conveyor.credit_transactions
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());

-- Users read their own ledger under the policies above; money moves only through the service
-- role, never through a user's call.
revoke all on conveyor.plans, conveyor.user_accounts, conveyor.usage_periods,
  conveyor.usage_events, conveyor.credit_transactions, conveyor.credit_rates,
  conveyor.model_prices from public, anon, authenticated;
grant select on conveyor.plans, conveyor.user_accounts, conveyor.usage_periods,
  conveyor.usage_events, conveyor.credit_transactions, conveyor.credit_rates,
  conveyor.model_prices to authenticated;
grant all on conveyor.plans, conveyor.user_accounts, conveyor.usage_periods,
  conveyor.usage_events, conveyor.credit_transactions, conveyor.credit_rates,
  conveyor.model_prices to service_role;
revoke all on function conveyor.conveyor_period_start(timestamptz), conveyor.conveyor_ensure_account(uuid),
  conveyor.conveyor_ensure_period(uuid, date), conveyor.check_and_consume_quota(uuid, bigint, bigint),
  conveyor.conveyor_move_credits(uuid, bigint, text, text, text, text),
  conveyor.add_credits(uuid, bigint, text, text, text, text),
  conveyor.deduct_credits(uuid, bigint, text, text, text, text),
  conveyor.record_usage(uuid, text, text, text, integer, integer, bigint, bigint, text, integer,
    uuid, integer, uuid, boolean, text, bigint, timestamptz),
  conveyor.conveyor_grant_period_credits(uuid, date), conveyor.reset_period(uuid, date),
  conveyor.get_remaining_quota(uuid), conveyor.admit_run(uuid, uuid, text),
  conveyor.get_user_activity_summary(uuid, integer)
  from public, anon, authenticated;
grant execute on function conveyor.conveyor_period_start(timestamptz), conveyor.conveyor_ensure_account(uuid),
  conveyor.conveyor_ensure_period(uuid, date), conveyor.check_and_consume_quota(uuid, bigint, bigint),
  conveyor.conveyor_move_credits(uuid, bigint, text, text, text, text),
  conveyor.add_credits(uuid, bigint, text, text, text, text),
  conveyor.deduct_credits(uuid, bigint, text, text, text, text),
  conveyor.record_usage(uuid, text, text, text, integer, integer, bigint, bigint, text, integer,
    uuid, integer, uuid, boolean, text, bigint, timestamptz),
  conveyor.conveyor_grant_period_credits(uuid, date), conveyor.reset_period(uuid, date),
  conveyor.get_remaining_quota(uuid), conveyor.admit_run(uuid, uuid, text),
  conveyor.get_user_activity_summary(uuid, integer)
  to service_role;
revoke all on type conveyor.plans, conveyor.user_accounts, conveyor.usage_periods,
  conveyor.usage_events, conveyor.credit_transactions, conveyor.credit_rates,
  conveyor.model_prices from public, anon, authenticated;
