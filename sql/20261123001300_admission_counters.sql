-- Admission without scanning a user's runs. admit_run counted the user's runs created today, and
-- their queued or running runs, on every submit: the first grows with the day (an enterprise
-- plan allows 100,000 runs a day), the second read every run the user ever had, since the index
-- it used leads with (user_id, created_at). bench/load.py found it: ~3 ms per submit after a
-- few thousand runs, growing. Now:
-- * runs_per_day keeps the count of runs each user created each UTC day, kept by a trigger on
--   every insert into workflow_runs (whichever path inserts), so the daily limit reads one row;
-- * a partial index on the unfinished runs by user, so the concurrency count reads only those
--   (at most the plan's limit, plus runs started without admission).
-- Both counts stay exact: admit_run still locks the account row first, and a refused or failed
-- submit rolls back its counter increment with its run.

create table public.runs_per_day (
  user_id uuid not null,
  day date not null,
  runs bigint not null,
  primary key (user_id, day)
);

alter table public.runs_per_day enable row level security;
revoke all on public.runs_per_day from anon, authenticated;

insert into public.runs_per_day (user_id, day, runs)
select user_id, (created_at at time zone 'UTC')::date, count(*)
  from public.workflow_runs
 where created_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
 group by 1, 2;

create function public.conveyor_count_run() returns trigger
language plpgsql as $$
begin
  insert into public.runs_per_day as c (user_id, day, runs)
  values (new.user_id, (new.created_at at time zone 'UTC')::date, 1)
  on conflict (user_id, day) do update set runs = c.runs + 1;
  return null;
end
$$;

create trigger workflow_runs_count_per_day
  after insert on public.workflow_runs
  for each row execute function public.conveyor_count_run();

create index workflow_runs_user_unfinished on public.workflow_runs (user_id)
  where status in ('queued', 'running');

create or replace function public.admit_run(p_user uuid, p_run uuid, p_job text)
returns table (code text, retry_after integer, resets_at timestamptz, credits_charged bigint,
               credit_balance bigint)
language plpgsql as $$
declare
  v_account public.user_accounts;
  v_plan public.plans;
  v_period public.usage_periods;
  v_day_start timestamptz := date_trunc('day', now() at time zone 'UTC') at time zone 'UTC';
  v_rate bigint;
  v_count bigint;
  v_balance bigint;
begin
  perform public.conveyor_ensure_account(p_user);
  -- Period before account, the order record_usage takes them in: no deadlock between the two.
  perform public.conveyor_ensure_period(p_user, public.conveyor_period_start(now()));
  select * into v_account from public.user_accounts where user_id = p_user for update;
  select * into v_plan from public.plans where id = v_account.plan_id;

  -- Today's runs before this one (its own insert is already counted).
  select coalesce(sum(c.runs), 0)
           - (select count(*) from public.workflow_runs r
               where r.id = p_run and r.created_at >= v_day_start)
    into v_count
    from public.runs_per_day c
   where c.user_id = p_user and c.day = (v_day_start at time zone 'UTC')::date;
  if v_count >= v_plan.daily_request_limit then
    return query select 'RATE_LIMITED', ceil(extract(epoch from
      v_day_start + interval '1 day' - now()))::integer, v_day_start + interval '1 day',
      0::bigint, v_account.credit_balance;
    return;
  end if;

  select count(*) into v_count from public.workflow_runs r
   where r.user_id = p_user and r.status in ('queued', 'running') and r.id <> p_run;
  if v_count >= v_plan.max_concurrent_runs then
    return query select 'CONCURRENCY_LIMIT', 5, null::timestamptz, 0::bigint,
      v_account.credit_balance;
    return;
  end if;

  select * into v_period from public.usage_periods
   where user_id = p_user and period_start = public.conveyor_period_start(now());
  if v_period.tokens_used >= v_period.token_quota
     or v_period.cost_used_micro_usd >= v_period.cost_quota_micro_usd then
    return query select 'QUOTA_EXCEEDED',
      ceil(extract(epoch from (v_period.period_start + interval '1 month')::timestamp
                              at time zone 'UTC' - now()))::integer,
      (v_period.period_start + interval '1 month')::timestamp at time zone 'UTC',
      0::bigint, v_account.credit_balance;
    return;
  end if;

  select r.credits into v_rate from public.credit_rates r
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
    select m.balance into v_balance from public.conveyor_move_credits(
      p_user, -v_rate, 'usage', 'Run ' || p_run, 'run:' || p_run, p_job) m;
  end if;
  return query select null::text, null::integer, null::timestamptz, v_rate, v_balance;
end
$$;
