-- The outbox of POST /api/usage: an accepted batch is stored here before the API answers 202, and
-- the worker deletes its row in the transaction that records it. The queue message only carries
-- the row's id. Redis can lose a message a worker took but had not yet registered as unacked
-- (kombu's BRPOP, then its bookkeeping: a kill -9 in between), and Redis may be down when the
-- batch arrives; either way the row stays, and the requeue_usage_batches job publishes it again.
-- A second delivery of a recorded batch finds no row and does nothing.

create table public.usage_batches (
  id uuid primary key default gen_random_uuid(),
  events json not null,
  event_count integer not null check (event_count between 1 and 1000),
  received_at timestamptz not null default now(),
  -- When the batch was last published; the requeue job republishes rows left this long.
  enqueued_at timestamptz not null default now()
);

create index usage_batches_enqueued_at on public.usage_batches (enqueued_at);

-- Only the service role (the API and the worker) touches batches.
alter table public.usage_batches enable row level security;
revoke all on public.usage_batches from anon, authenticated;
