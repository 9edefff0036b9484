-- Notifications: what a user is told (run finished, quota reached, payment failed, credits low),
-- numbered per user so a websocket client can resume with `since`, read under RLS.

-- One counter row per user: taking it in the notifying transaction orders a user's notifications
-- by commit, so a client that has seen seq n has seen everything numbered below n.
create table conveyor.notification_counters (
  user_id uuid primary key,
  last_seq bigint not null default 0 check (last_seq >= 0)
);

create table conveyor.notifications (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  seq bigint not null check (seq > 0),
  notification_type text not null check (notification_type ~ '^[a-z][a-z0-9_]{0,63}$'),
  severity text not null check (severity in ('info', 'success', 'warning', 'error')),
  title text not null check (char_length(title) between 1 and 200),
  message text not null check (char_length(message) <= 2000),
  action_url text check (char_length(action_url) <= 2000),
  metadata jsonb not null default '{}'::jsonb,
  -- What the notification is about (`run:<id>:completed`, `quota:2026-11:80`, a Stripe event id):
  -- a producer that runs again (a redelivered task, a retried webhook) notifies once.
  dedupe_key text check (char_length(dedupe_key) between 1 and 255),
  read_at timestamptz,
  created_at timestamptz not null default now(),
  constraint notifications_user_seq unique (user_id, seq),
  constraint notifications_user_dedupe unique (user_id, dedupe_key)
);

create index notifications_user_created
  on conveyor.notifications (user_id, created_at desc, id desc);
create index notifications_user_unread
  on conveyor.notifications (user_id, created_at desc, id desc) where read_at is null;

alter table conveyor.notifications enable row level security;
alter table conveyor.notification_counters enable row level security;

-- Read: the addressee, or an admin (support, the `user:<id>` websocket topic); mark read: only
-- the addressee.
create policy notifications_owner_or_admin_select on conveyor.notifications
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());
create policy notifications_owner_mark_read on conveyor.notifications
  for update to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());

revoke all on conveyor.notifications, conveyor.notification_counters
  from public, anon, authenticated;
grant select on conveyor.notifications to authenticated;
-- Marking as read is the one write a user makes, through the policy above.
grant update (read_at) on conveyor.notifications to authenticated;
grant all on conveyor.notifications, conveyor.notification_counters to service_role;
revoke all on type conveyor.notification_counters, conveyor.notifications
  from public, anon, authenticated;
