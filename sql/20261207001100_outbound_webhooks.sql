-- Outbound webhooks: endpoints users register, the events Conveyor reports, and one delivery per
-- (event, target) with a row per attempt. webhook_deliveries is the outbox: a delivery is created
-- in the transaction of what it reports, and a periodic job queues again whatever is due.

create table conveyor.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  url text not null check (char_length(url) between 1 and 2000),
  events text[] not null check (cardinality(events) between 1 and 20),
  description text check (char_length(description) <= 500),
  -- Needed to sign: readable by the service role only (see the column grants below).
  secret text not null check (char_length(secret) between 16 and 200),
  -- After a rotation the old secret also signs, until previous_secret_expires_at.
  previous_secret text check (char_length(previous_secret) between 16 and 200),
  previous_secret_expires_at timestamptz,
  consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
  disabled_at timestamptz,
  disabled_reason text check (char_length(disabled_reason) <= 500),
  created_at timestamptz not null default now()
);

create index webhook_endpoints_user_created
  on conveyor.webhook_endpoints (user_id, created_at desc, id desc);

-- Signs the deliveries to a run's own `webhook_url` (created on first use, one per user).
create table conveyor.webhook_signing_secrets (
  user_id uuid primary key,
  secret text not null check (char_length(secret) between 16 and 200),
  created_at timestamptz not null default now()
);

create table conveyor.webhook_events (
  id text primary key check (id ~ '^evt_[0-9a-f]{32}$'),
  user_id uuid not null,
  type text not null check (type ~ '^[a-z]+\.[a-z_]+$'),
  data jsonb not null,
  created_at timestamptz not null default now()
);

create table conveyor.webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  event_id text not null references conveyor.webhook_events (id) on delete cascade,
  user_id uuid not null,
  -- Null for a run's own webhook_url, signed with the user's signing secret.
  endpoint_id uuid references conveyor.webhook_endpoints (id) on delete cascade,
  url text not null check (char_length(url) between 1 and 2000),
  status text not null default 'pending' check (status in ('pending', 'succeeded', 'failed')),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz not null default now(),
  -- Held by the worker sending it; a worker killed mid-request leaves it to expire.
  lease_until timestamptz,
  enqueued_at timestamptz not null default now(),
  last_status_code integer,
  last_error text check (char_length(last_error) <= 2000),
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint webhook_deliveries_finished_has_time
    check (status = 'pending' or finished_at is not null)
);

create index webhook_deliveries_endpoint_created
  on conveyor.webhook_deliveries (endpoint_id, created_at desc, id desc);
create index webhook_deliveries_event on conveyor.webhook_deliveries (event_id);
-- The re-queue job's scan: only pending deliveries are ever looked at.
create index webhook_deliveries_due on conveyor.webhook_deliveries (next_attempt_at)
  where status = 'pending';

create table conveyor.webhook_delivery_attempts (
  id bigint generated always as identity primary key,
  delivery_id uuid not null references conveyor.webhook_deliveries (id) on delete cascade,
  attempt integer not null check (attempt > 0),
  status_code integer,
  latency_ms integer not null check (latency_ms >= 0),
  error text check (char_length(error) <= 2000),
  next_attempt_at timestamptz,
  created_at timestamptz not null default now(),
  constraint webhook_delivery_attempts_once unique (delivery_id, attempt)
);

alter table conveyor.webhook_endpoints enable row level security;
alter table conveyor.webhook_signing_secrets enable row level security;
alter table conveyor.webhook_events enable row level security;
alter table conveyor.webhook_deliveries enable row level security;
alter table conveyor.webhook_delivery_attempts enable row level security;

create policy webhook_endpoints_owner_select on conveyor.webhook_endpoints
  for select to authenticated using (user_id = auth.uid());
create policy webhook_events_owner_select on conveyor.webhook_events
  for select to authenticated using (user_id = auth.uid());
create policy webhook_deliveries_owner_select on conveyor.webhook_deliveries
  for select to authenticated using (user_id = auth.uid());
create policy webhook_delivery_attempts_owner_select on conveyor.webhook_delivery_attempts
  for select to authenticated using (exists (
    select 1 from conveyor.webhook_deliveries d
     where d.id = delivery_id and d.user_id = auth.uid()));

-- Users read their rows but never a secret; every write goes through the service role.
revoke all on conveyor.webhook_endpoints, conveyor.webhook_signing_secrets,
  conveyor.webhook_events, conveyor.webhook_deliveries, conveyor.webhook_delivery_attempts
  from public, anon, authenticated;
grant select (id, user_id, url, events, description, previous_secret_expires_at,
              consecutive_failures, disabled_at, disabled_reason, created_at)
  on conveyor.webhook_endpoints to authenticated;
grant select on conveyor.webhook_events, conveyor.webhook_deliveries,
  conveyor.webhook_delivery_attempts to authenticated;
grant all on conveyor.webhook_endpoints, conveyor.webhook_signing_secrets,
  conveyor.webhook_events, conveyor.webhook_deliveries, conveyor.webhook_delivery_attempts
  to service_role;
revoke all on type conveyor.webhook_endpoints, conveyor.webhook_signing_secrets,
  conveyor.webhook_events, conveyor.webhook_deliveries, conveyor.webhook_delivery_attempts
  from public, anon, authenticated;
