-- Stripe: every webhook event as received (the durable inbox), each subscription as Stripe last
-- told us, and what each payment bought (so a refund can take back the right credits).
-- conveyor/billing.py applies the events; this file holds the state and the rules that must
-- stay atomic.

-- Events are stored before they are acknowledged to Stripe and processed from this table, so a
-- crash, a Redis outage or a bug never loses one: the reconciler retries what is not final.
create table conveyor.stripe_events (
  id text primary key check (id ~ '^evt_[A-Za-z0-9_]{1,250}$'),
  type text not null,
  created timestamptz not null,  -- Stripe's event.created: the order of state changes
  livemode boolean not null,
  payload jsonb not null,
  received_at timestamptz not null default now(),
  -- received: waiting for a worker; processed: applied; skipped: older than the stored state;
  -- ignored: a type we do not handle; failed: to retry (last_error says why).
  status text not null default 'received'
    check (status in ('received', 'processed', 'skipped', 'ignored', 'failed')),
  attempts integer not null default 0 check (attempts >= 0),
  last_error text,
  next_attempt_at timestamptz not null default now(),
  processed_at timestamptz
);

create index stripe_events_pending on conveyor.stripe_events (next_attempt_at)
  where status in ('received', 'failed');
create index stripe_events_listing on conveyor.stripe_events (received_at desc, id desc);

-- One row per Stripe subscription. state_at is the `created` time of the event the state came
-- from: an event older than it is recorded and skipped, so state only moves forward.
create table conveyor.user_subscriptions (
  stripe_subscription_id text primary key,
  user_id uuid not null,
  stripe_customer_id text,
  price_id text,
  plan_id text not null references conveyor.plans (id),
  status text not null check (status in (
    'incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled', 'unpaid',
    'paused')),
  current_period_start timestamptz,
  current_period_end timestamptz,
  cancel_at_period_end boolean not null default false,
  state_at timestamptz not null,
  state_event_id text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index user_subscriptions_user on conveyor.user_subscriptions (user_id, state_at desc);

-- What one payment (a credit pack's checkout session, or a subscription invoice) bought. Refunds
-- take back credits in proportion to the amount refunded, never below a zero balance; what the
-- balance could not cover is kept in refund_shortfall.
create table conveyor.stripe_payments (
  id text primary key,  -- checkout session id (cs_...) or invoice id (in_...)
  user_id uuid not null,
  payment_intent text unique,
  charge text unique,
  credits bigint not null check (credits >= 0),
  amount bigint not null check (amount >= 0),  -- in the currency's minor unit
  currency text,
  refunded_amount bigint not null default 0 check (refunded_amount >= 0),
  refunded_credits bigint not null default 0 check (refunded_credits >= 0),
  refund_shortfall bigint not null default 0 check (refund_shortfall >= 0),
  created_at timestamptz not null default now()
);

create index stripe_payments_user on conveyor.stripe_payments (user_id);

-- Store a subscription's state from an event unless a state from a later event is already
-- stored (ties go to the new event unless the stored one is final). One statement, so two
-- workers applying events of the same subscription cannot interleave. Returns whether applied.
create function conveyor.conveyor_apply_subscription_state(
  p_subscription text, p_user uuid, p_customer text, p_price text, p_plan text, p_status text,
  p_period_start timestamptz, p_period_end timestamptz, p_cancel_at_period_end boolean,
  p_state_at timestamptz, p_event text
) returns boolean
language plpgsql as $$
declare
  v_applied boolean;
begin
  insert into conveyor.user_subscriptions as s
    (stripe_subscription_id, user_id, stripe_customer_id, price_id, plan_id, status,
     current_period_start, current_period_end, cancel_at_period_end, state_at, state_event_id)
  values (p_subscription, p_user, p_customer, p_price, p_plan, p_status, p_period_start,
          p_period_end, coalesce(p_cancel_at_period_end, false), p_state_at, p_event)
  on conflict (stripe_subscription_id) do update
     set stripe_customer_id = coalesce(excluded.stripe_customer_id, s.stripe_customer_id),
         price_id = coalesce(excluded.price_id, s.price_id),
         plan_id = excluded.plan_id,
         status = excluded.status,
         current_period_start = coalesce(excluded.current_period_start, s.current_period_start),
         current_period_end = coalesce(excluded.current_period_end, s.current_period_end),
         cancel_at_period_end = excluded.cancel_at_period_end,
         state_at = excluded.state_at,
         state_event_id = excluded.state_event_id,
         updated_at = now()
   where s.state_at < excluded.state_at
      or (s.state_at = excluded.state_at
          and s.status not in ('canceled', 'incomplete_expired')
          and s.state_event_id <> excluded.state_event_id)
  returning true into v_applied;
  return coalesce(v_applied, false);
end
$$;

-- The user's plan follows their most recent live subscription (free without one); the current
-- month's period takes the new plan's limits at once. Returns the plan now in force.
create function conveyor.conveyor_sync_plan(p_user uuid) returns text
language plpgsql as $$
declare
  v_plan text;
begin
  perform conveyor.conveyor_ensure_account(p_user);
  select s.plan_id into v_plan from conveyor.user_subscriptions s
   where s.user_id = p_user and s.status in ('active', 'trialing', 'past_due')
   order by s.state_at desc, s.stripe_subscription_id
   limit 1;
  v_plan := coalesce(v_plan, 'free');
  update conveyor.user_accounts set plan_id = v_plan, updated_at = now()
   where user_id = p_user and plan_id is distinct from v_plan;
  update conveyor.usage_periods up
     set token_quota = p.monthly_token_quota,
         cost_quota_micro_usd = p.monthly_cost_quota_micro_usd
    from conveyor.plans p
   where p.id = v_plan and up.user_id = p_user
     and up.period_start = conveyor.conveyor_period_start(now());
  return v_plan;
end
$$;

-- Take back up to p_amount credits for a refund: what the balance holds, never below zero.
-- Returns the credits taken and the balance after. Once per reference, like every movement.
create function conveyor.conveyor_take_back_credits(
  p_user uuid, p_amount bigint, p_description text, p_reference text
) returns table (taken bigint, balance bigint)
language plpgsql as $$
declare
  v_balance bigint;
  v_take bigint;
begin
  if p_amount <= 0 then
    raise exception 'amount must be positive' using errcode = '22023';
  end if;
  perform conveyor.conveyor_ensure_account(p_user);
  select a.credit_balance into v_balance from conveyor.user_accounts a
   where a.user_id = p_user for update;
  v_take := least(p_amount, v_balance);
  if v_take > 0 then
    select m.balance into v_balance from conveyor.conveyor_move_credits(
      p_user, -v_take, 'refund', p_description, p_reference, null) m;
  end if;
  return query select v_take, v_balance;
end
$$;

alter table conveyor.stripe_events enable row level security;
alter table conveyor.user_subscriptions enable row level security;
alter table conveyor.stripe_payments enable row level security;

-- Users read their own subscription and payments; events are for the service role and admins
-- (through the API, which checks the role).
create policy user_subscriptions_owner_or_admin_select on conveyor.user_subscriptions
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());
create policy stripe_payments_owner_or_admin_select on conveyor.stripe_payments
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());

revoke all on conveyor.stripe_events, conveyor.user_subscriptions, conveyor.stripe_payments
  from public, anon, authenticated;
grant select on conveyor.user_subscriptions, conveyor.stripe_payments to authenticated;
grant all on conveyor.stripe_events, conveyor.user_subscriptions, conveyor.stripe_payments
  to service_role;
revoke all on function conveyor.conveyor_apply_subscription_state(
    text, uuid, text, text, text, text, timestamptz, timestamptz, boolean, timestamptz, text),
  conveyor.conveyor_sync_plan(uuid),
  conveyor.conveyor_take_back_credits(uuid, bigint, text, text)
  from public, anon, authenticated;
grant execute on function conveyor.conveyor_apply_subscription_state(
    text, uuid, text, text, text, text, timestamptz, timestamptz, boolean, timestamptz, text),
  conveyor.conveyor_sync_plan(uuid),
  conveyor.conveyor_take_back_credits(uuid, bigint, text, text)
  to service_role;
revoke all on type conveyor.stripe_events, conveyor.user_subscriptions, conveyor.stripe_payments
  from public, anon, authenticated;
