-- Usage ingestion in batches: `record_usage_batch` records up to 1,000 events in one transaction
-- with the rules of `record_usage` (exactly once per (user_id, idempotency_key), counted in the
-- month's usage period, credits debited never below zero, quota thresholds reported once), but
-- set-based: one insert for the events, one update per table for the totals.
--
-- Lock order is the one `record_usage` takes, each step sorted by user (then key / period):
-- event keys, new accounts, usage periods, accounts. Concurrent batches, and a batch beside the
-- per-event `record_usage`, therefore wait for each other in one direction and do not deadlock.
-- (`admit_run` also opens the period before locking the account, the same order. Should Postgres
-- still abort a batch for a deadlock or a serialization failure, the caller retries the whole
-- batch, which is safe.)
--
-- Credits: one `credit_transactions` row per user and batch for the credits its new events were
-- charged (reference `usage-batch:<first new event id>`); each event keeps its own charge in
-- usage_events.credits_charged. Events are charged in (occurred_at, id) order while credits last.

-- One event as the batch carries it: the fields of `record_usage` plus the user.
create type conveyor.usage_batch_event as (
  user_id uuid,
  idempotency_key text,
  provider text,
  model text,
  agent_mode text,
  prompt_tokens integer,
  completion_tokens integer,
  input_cost_micro_usd bigint,
  output_cost_micro_usd bigint,
  latency_ms integer,
  run_id uuid,
  step_position integer,
  session_id uuid,
  success boolean,
  error text,
  credits bigint,
  occurred_at timestamptz
);

-- The quota threshold (0, 80 or 100 percent) a period's use has reached; as in record_usage.
create function conveyor.conveyor_quota_percent(
  p_tokens bigint, p_token_quota bigint, p_cost bigint, p_cost_quota bigint
) returns smallint
language sql immutable as $$
  select (case
    when p_tokens >= p_token_quota or p_cost >= p_cost_quota then 100
    when p_tokens * 5 >= p_token_quota * 4 or p_cost * 5 >= p_cost_quota * 4 then 80
    else 0 end)::smallint
$$;

-- How record_usage_batch is made fast under the rules at the top of this file:
-- * the batch arrives as `json`, not `jsonb`: json_populate_recordset reads the text once, where
--   a jsonb parameter is first parsed into a tree (measured: 4 ms of a 1,000-event batch);
-- * usage periods are opened (conveyor_ensure_period, one call per user) only for users who have
--   no period this month yet, instead of for every user of every batch (13 ms per batch);
-- * the new events are kept as the few fields the later steps read (usage_batch_recorded), not as
--   whole usage_events rows (8 ms per batch);
-- * model prices are joined once instead of looked up twice per event.
-- bench/usage.py measures it.


-- What the later steps of a batch read of each event it recorded.
create type conveyor.usage_batch_recorded as (
  id bigint,
  user_id uuid,
  agent_mode text,
  occurred_at timestamptz,
  prompt_tokens integer,
  completion_tokens integer,
  input_cost_micro_usd bigint,
  output_cost_micro_usd bigint,
  credits_charged bigint
);

create function conveyor.record_usage_batch(p_events json)
returns table (
  received integer, recorded integer, duplicates integer, credits_charged bigint,
  thresholds jsonb
)
language plpgsql as $$
#variable_conflict use_column
declare
  v_received integer;
  v_recorded integer;
  v_new conveyor.usage_batch_recorded[];
  v_created uuid[];
  v_accounts conveyor.user_accounts[];
  v_charged bigint := 0;
  v_thresholds jsonb := '[]';
begin
  if json_typeof(p_events) is distinct from 'array' then
    raise exception 'p_events must be a JSON array of events' using errcode = '22023';
  end if;
  v_received := json_array_length(p_events);
  if v_received > 1000 then
    raise exception 'at most 1000 events per batch, got %', v_received using errcode = '22023';
  end if;

  -- 1. The events, once each: the first occurrence of a key in the batch, and only if no earlier
  -- batch recorded it (a concurrent batch holding the same key is waited for). Missing costs are
  -- priced from model_prices. credits_charged holds the credits asked for until step 4.
  with batch as (
    select distinct on (e.user_id, e.idempotency_key) e.*
      from json_populate_recordset(null::conveyor.usage_batch_event, p_events)
           with ordinality as e
     order by e.user_id, e.idempotency_key, e.ordinality
  ), inserted as (
    insert into conveyor.usage_events as u
      (user_id, idempotency_key, provider, model, agent_mode, prompt_tokens, completion_tokens,
       input_cost_micro_usd, output_cost_micro_usd, latency_ms, run_id, step_position,
       session_id, success, error, credits_charged, occurred_at)
    select b.user_id, b.idempotency_key, b.provider, b.model, b.agent_mode, b.prompt_tokens,
           b.completion_tokens,
           coalesce(b.input_cost_micro_usd,
             ceil(b.prompt_tokens::numeric * p.input_per_million_micro_usd / 1e6), 0),
           coalesce(b.output_cost_micro_usd,
             ceil(b.completion_tokens::numeric * p.output_per_million_micro_usd / 1e6), 0),
           b.latency_ms, b.run_id, b.step_position, b.session_id, coalesce(b.success, true),
           b.error, coalesce(b.credits, 0), coalesce(b.occurred_at, now())
      from batch b
      left join conveyor.model_prices p on p.model = b.model
     order by b.user_id, b.idempotency_key
    on conflict (user_id, idempotency_key) do nothing
    returning row(u.id, u.user_id, u.agent_mode, u.occurred_at, u.prompt_tokens,
              u.completion_tokens, u.input_cost_micro_usd, u.output_cost_micro_usd,
              u.credits_charged)::conveyor.usage_batch_recorded as recorded
  )
  select array_agg(i.recorded) into v_new from inserted i;
  v_recorded := coalesce(array_length(v_new, 1), 0);

  if v_recorded > 0 then
    -- 2. Accounts, created on the free plan when missing; a new account gets this month's plan
    -- credits at once (what conveyor_ensure_account does, for every new user of the batch).
    with created as (
      insert into conveyor.user_accounts as a (user_id)
      select distinct n.user_id from unnest(v_new) n order by 1
      on conflict (user_id) do nothing
      returning a.user_id
    )
    select array_agg(c.user_id order by c.user_id) into v_created from created c;
    perform conveyor.conveyor_grant_period_credits(c.user_id, conveyor.conveyor_period_start(now()))
       from unnest(v_created) as c(user_id);
    -- The current month's period opened for users first seen this month grants their monthly
    -- credits (conveyor_ensure_period does), in user order like every other lock here.
    perform conveyor.conveyor_ensure_period(u.user_id, conveyor.conveyor_period_start(now()))
       from (select distinct n.user_id from unnest(v_new) n
              where not exists (select 1 from conveyor.usage_periods up
                                 where up.user_id = n.user_id
                                   and up.period_start = conveyor.conveyor_period_start(now()))
              order by 1) as u(user_id);

    -- 3. Usage periods: each (user, month)'s totals added in one upsert, in (user, month) order
    -- (a missing period is opened with the plan's limits). Usage already happened: it is always
    -- counted. Then the threshold each new event crossed first, counting the batch's events in
    -- (occurred_at, id) order from the period's totals before the batch, as record_usage reports
    -- them one by one; usage only grows, so only a period now past its notified level has one.
    with sums as (
      select n.user_id, conveyor.conveyor_period_start(n.occurred_at) as period_start,
             sum(n.prompt_tokens::bigint + n.completion_tokens)::bigint as tokens,
             sum(n.input_cost_micro_usd + n.output_cost_micro_usd)::bigint as cost,
             count(*) as requests
        from unnest(v_new) n
       group by 1, 2
    ), totals as (
      insert into conveyor.usage_periods as up
        (user_id, period_start, token_quota, cost_quota_micro_usd, tokens_used,
         cost_used_micro_usd, requests_used)
      select s.user_id, s.period_start, p.monthly_token_quota, p.monthly_cost_quota_micro_usd,
             s.tokens, s.cost, s.requests
        from sums s
        join conveyor.user_accounts a on a.user_id = s.user_id
        join conveyor.plans p on p.id = a.plan_id
       order by s.user_id, s.period_start
      on conflict (user_id, period_start) do update
         set tokens_used = up.tokens_used + excluded.tokens_used,
             cost_used_micro_usd = up.cost_used_micro_usd + excluded.cost_used_micro_usd,
             requests_used = up.requests_used + excluded.requests_used
      returning up.user_id, up.period_start, up.token_quota, up.cost_quota_micro_usd,
                up.tokens_used, up.cost_used_micro_usd, up.notified_percent
    ), before as (
      select t.user_id, t.period_start, t.token_quota, t.cost_quota_micro_usd,
             t.notified_percent, t.tokens_used - s.tokens as tokens_used,
             t.cost_used_micro_usd - s.cost as cost_used_micro_usd
        from totals t
        join sums s on s.user_id = t.user_id and s.period_start = t.period_start
       where conveyor.conveyor_quota_percent(t.tokens_used, t.token_quota,
               t.cost_used_micro_usd, t.cost_quota_micro_usd) > t.notified_percent
    ), levels as (
      select n.id, n.user_id, p.period_start, n.occurred_at, p.notified_percent,
             conveyor.conveyor_quota_percent(
               p.tokens_used
                 + (sum(n.prompt_tokens::bigint + n.completion_tokens) over w)::bigint,
               p.token_quota,
               p.cost_used_micro_usd
                 + (sum(n.input_cost_micro_usd + n.output_cost_micro_usd) over w)::bigint,
               p.cost_quota_micro_usd) as level
        from unnest(v_new) n
        join before p
          on p.user_id = n.user_id
         and p.period_start = conveyor.conveyor_period_start(n.occurred_at)
      window w as (partition by n.user_id, p.period_start order by n.occurred_at, n.id)
    ), crossed as (
      select v.id, v.user_id, v.period_start,
             case when v.level > greatest(v.notified_percent, coalesce(lag(v.level) over w, 0))
                  then v.level else 0 end as percent
        from levels v
      window w as (partition by v.user_id, v.period_start order by v.occurred_at, v.id)
    )
    select coalesce(jsonb_agg(jsonb_build_object(
             'user_id', c.user_id, 'period_start', c.period_start, 'event_id', c.id,
             'percent', c.percent) order by c.id), '[]')
      into v_thresholds
      from crossed c
     where c.percent > 0;

    if v_thresholds <> '[]' then
      update conveyor.usage_periods up
         set notified_percent = conveyor.conveyor_quota_percent(up.tokens_used, up.token_quota,
                                  up.cost_used_micro_usd, up.cost_quota_micro_usd)
       where (up.user_id, up.period_start) in (
               select (t ->> 'user_id')::uuid, (t ->> 'period_start')::date
                 from jsonb_array_elements(v_thresholds) t);
    end if;

    -- 4. Credits: lock the accounts that owe any, in order; charge each event, in (occurred_at,
    -- id) order, what the balance still covers (never below zero). One ledger row per user and
    -- batch, for the sum; its reference names the user's first new event of the batch, which
    -- belongs to no other batch. Each event keeps its own charge in usage_events.credits_charged.
    select array_agg(l.a order by (l.a).user_id) into v_accounts
      from (select a from conveyor.user_accounts a
             where a.user_id in (select n.user_id from unnest(v_new) n
                                  where n.credits_charged > 0)
             order by a.user_id
               for update) l;

    if v_accounts is not null then
      with asked as (
        select n.id, n.user_id, n.agent_mode, n.occurred_at, n.credits_charged as requested,
               a.credit_balance as balance
          from unnest(v_new) n
          join unnest(v_accounts) a on a.user_id = n.user_id
         where n.credits_charged > 0
      ), charged as (
        select q.*, least(q.requested, greatest(0, q.balance
                 - (sum(q.requested) over w - q.requested))) as charged
          from asked q
        window w as (partition by q.user_id order by q.occurred_at, q.id)
      ), totals as (
        select c.user_id, c.balance, sum(c.charged)::bigint as total, min(c.id) as first_id,
               count(*) filter (where c.charged > 0) as events,
               case when count(distinct c.agent_mode) = 1 then min(c.agent_mode) end as endpoint
          from charged c
         group by c.user_id, c.balance
        having sum(c.charged) > 0
      ), debited as (
        update conveyor.user_accounts a
           set credit_balance = a.credit_balance - t.total, updated_at = now()
          from totals t
         where a.user_id = t.user_id
      ), corrected as (
        update conveyor.usage_events e
           set credits_charged = c.charged
          from charged c
         where e.id = c.id and c.charged <> c.requested
      ), ledger as (
        insert into conveyor.credit_transactions
          (user_id, amount, balance_after, kind, description, endpoint, reference, created_at)
        select t.user_id, -t.total, t.balance - t.total, 'usage',
               'AI usage: ' || t.events || ' event(s)', t.endpoint, 'usage-batch:' || t.first_id,
               clock_timestamp()
          from totals t
         order by t.user_id
      )
      select coalesce(sum(t.total), 0) into v_charged from totals t;
    end if;
  end if;

  return query select v_received, v_recorded, v_received - v_recorded, v_charged, v_thresholds;
end
$$;


-- The outbox of POST /api/usage: an accepted batch is stored here before the API answers 202, and
-- the worker deletes its row in the transaction that records it. The queue message only carries
-- the row's id. Redis can lose a message a worker took but had not yet registered as unacked
-- (kombu's BRPOP, then its bookkeeping: a kill -9 in between), and Redis may be down when the
-- batch arrives; either way the row stays, and the requeue_usage_batches job publishes it again.
-- A second delivery of a recorded batch finds no row and does nothing.

create table conveyor.usage_batches (
  id uuid primary key default gen_random_uuid(),
  events json not null,
  event_count integer not null check (event_count between 1 and 1000),
  received_at timestamptz not null default now(),
  -- When the batch was last published; the requeue job republishes rows left this long.
  enqueued_at timestamptz not null default now()
);

create index usage_batches_enqueued_at on conveyor.usage_batches (enqueued_at);

-- Only the service role (the API and the worker) touches batches.
alter table conveyor.usage_batches enable row level security;
-- A stored usage batch is written once and read once (by the worker that records and deletes it),
-- so compressing it is wasted work: pglz on a 1,000-event batch (~330 KB of JSON) made the
-- insert, read and delete of the outbox row take 14.6 ms against 8.3 ms stored out of line
-- uncompressed (measured on the embedded Postgres 16 of this project). lz4 would be as fast but
-- is not built into every Postgres this runs on.
alter table conveyor.usage_batches alter column events set storage external;

-- Only the service role (the API and the worker) touches batches and these functions.
revoke all on conveyor.usage_batches from public, anon, authenticated;
grant all on conveyor.usage_batches to service_role;
revoke all on type conveyor.usage_batch_event, conveyor.usage_batch_recorded
  from public, anon, authenticated;
grant usage on type conveyor.usage_batch_event, conveyor.usage_batch_recorded to service_role;
revoke all on function conveyor.conveyor_quota_percent(bigint, bigint, bigint, bigint),
  conveyor.record_usage_batch(json) from public, anon, authenticated;
grant execute on function conveyor.conveyor_quota_percent(bigint, bigint, bigint, bigint),
  conveyor.record_usage_batch(json) to service_role;
revoke all on type conveyor.usage_batches from public, anon, authenticated;
