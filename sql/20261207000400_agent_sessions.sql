-- Agent sessions (threads) and their messages. A session hands out message sequence numbers
-- itself (last_sequence_number), so concurrent appends serialise on its row and leave no gaps.

create table conveyor.agent_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null,
  agent_mode text not null check (char_length(agent_mode) between 1 and 100),
  project_name text check (char_length(project_name) <= 200),
  project_path text check (char_length(project_path) <= 1000),
  last_sequence_number integer not null default 0 check (last_sequence_number >= 0),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index agent_sessions_user_created
  on conveyor.agent_sessions (user_id, created_at desc, id desc);

create table conveyor.agent_messages (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references conveyor.agent_sessions (id) on delete cascade,
  sequence_number integer not null check (sequence_number > 0),
  role text not null check (role in ('user', 'assistant', 'system', 'tool')),
  content text not null,
  -- No foreign key: runs may be purged while the conversation that mentions them is kept.
  run_id uuid,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  constraint agent_messages_session_sequence unique (session_id, sequence_number)
);

alter table conveyor.agent_sessions enable row level security;
alter table conveyor.agent_messages enable row level security;

create policy agent_sessions_owner_or_admin_select on conveyor.agent_sessions
  for select to authenticated
  using (user_id = auth.uid() or conveyor.conveyor_is_admin());

create policy agent_messages_owner_or_admin_select on conveyor.agent_messages
  for select to authenticated
  using (exists (
    select 1 from conveyor.agent_sessions s
     where s.id = session_id and (s.user_id = auth.uid() or conveyor.conveyor_is_admin())
  ));


revoke all on conveyor.agent_sessions, conveyor.agent_messages from public, anon, authenticated;
grant select on conveyor.agent_sessions, conveyor.agent_messages to authenticated;
grant all on conveyor.agent_sessions, conveyor.agent_messages to service_role;
revoke all on type conveyor.agent_sessions, conveyor.agent_messages
  from public, anon, authenticated;
