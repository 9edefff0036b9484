-- Payments as Stripe sends them today (issue 22).
--
-- 1. What paid for a purchase. Since API version 2025-03-31 (basil) an invoice names no charge
--    or payment intent: it lists InvoicePayments, possibly several (partial payments), and a
--    charge no longer names its invoice. So the payments that paid a purchase move from two
--    columns of stripe_payments to rows of their own, each with what was refunded of it; a
--    refund takes back credits in proportion to the purchase's refunds over all its payments.
--
-- 2. Ties between subscription states. Stripe stamps events to the second, so two states of one
--    subscription can carry the same `created` (an `updated` to active and the `created` at
--    incomplete before it). The handler re-reads the subscription from Stripe's API when an
--    event ties or disagrees with what is stored (conveyor/billing/subscriptions.py); this
--    function stores that answer (p_from_stripe) and, without an API key, decides ties by the
--    status instead of by arrival.

create table conveyor.stripe_payment_parts (
  id bigint generated always as identity primary key,
  payment_id text not null references conveyor.stripe_payments (id) on delete cascade,
  payment_intent text unique,
  charge text unique,
  -- The charge's own amount_refunded (Stripe's running total), the largest seen: a replayed
  -- older refund event cannot lower it.
  refunded_amount bigint not null default 0 check (refunded_amount >= 0),
  check (payment_intent is not null or charge is not null)
);

create index stripe_payment_parts_payment on conveyor.stripe_payment_parts (payment_id);

insert into conveyor.stripe_payment_parts (payment_id, payment_intent, charge, refunded_amount)
select id, payment_intent, charge, refunded_amount from conveyor.stripe_payments
 where payment_intent is not null or charge is not null;

-- One PaymentIntent may pay several invoices (basil), so these could no longer be unique; the
-- parts above replace them.
alter table conveyor.stripe_payments drop column payment_intent, drop column charge;

alter table conveyor.stripe_payment_parts enable row level security;
revoke all on conveyor.stripe_payment_parts from public, anon, authenticated;
grant all on conveyor.stripe_payment_parts to service_role;
revoke all on type conveyor.stripe_payment_parts from public, anon, authenticated;

-- Where a tie is decided without Stripe's word: the status further along this order wins, so a
-- tie never takes a paying user (active, trialing, past_due) back to incomplete or to unpaid.
-- Final statuses come first because Stripe never moves a subscription out of them: if one of
-- the tied events says canceled, the subscription is canceled, whatever arrived last.
create function conveyor.conveyor_subscription_tie_rank(p_status text) returns integer
language sql immutable as $$
  select case p_status
    when 'canceled' then 4
    when 'incomplete_expired' then 4
    when 'active' then 3
    when 'trialing' then 3
    when 'past_due' then 3
    when 'unpaid' then 2
    when 'paused' then 2
    else 1  -- incomplete
  end
$$;

drop function conveyor.conveyor_apply_subscription_state(
  text, uuid, text, text, text, text, timestamptz, timestamptz, boolean, timestamptz, text);

-- Store a subscription's state unless a later one is stored. A tie goes to the state ranked
-- higher by conveyor_subscription_tie_rank (equal ranks: the newer delivery). p_from_stripe: the
-- state was read from Stripe's API just now, under the handler's lock on this subscription, and
-- wins over anything stored at or before p_state_at. One statement, so two workers applying
-- events of the same subscription cannot interleave. Returns whether applied.
create function conveyor.conveyor_apply_subscription_state(
  p_subscription text, p_user uuid, p_customer text, p_price text, p_plan text, p_status text,
  p_period_start timestamptz, p_period_end timestamptz, p_cancel_at_period_end boolean,
  p_state_at timestamptz, p_event text, p_from_stripe boolean
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
      or (s.state_at = excluded.state_at and p_from_stripe)
      or (s.state_at = excluded.state_at
          and s.state_event_id <> excluded.state_event_id
          and conveyor.conveyor_subscription_tie_rank(excluded.status)
              >= conveyor.conveyor_subscription_tie_rank(s.status))
  returning true into v_applied;
  return coalesce(v_applied, false);
end
$$;

revoke all on function conveyor.conveyor_subscription_tie_rank(text),
  conveyor.conveyor_apply_subscription_state(
    text, uuid, text, text, text, text, timestamptz, timestamptz, boolean, timestamptz, text,
    boolean)
  from public, anon, authenticated;
grant execute on function conveyor.conveyor_subscription_tie_rank(text),
  conveyor.conveyor_apply_subscription_state(
    text, uuid, text, text, text, text, timestamptz, timestamptz, boolean, timestamptz, text,
    boolean)
  to service_role;
