-- Agent sessions (threads) and their messages. A session hands out message sequence numbers
-- itself (last_sequence_number), so concurrent appends serialise on its row and leave no gaps.

create table public.agent_sessions (
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
  on public.agent_sessions (user_id, created_at desc, id desc);

create table public.agent_messages (
  id uuid primary key default gen_random_uuid(),
  session_id uuid not null references public.agent_sessions (id) on delete cascade,
  sequence_number integer not null check (sequence_number > 0),
  role text not null check (role in ('user', 'assistant', 'system', 'tool')),
  content text not null,
  -- No foreign key: runs may be purged while the conversation that mentions them is kept.
  run_id uuid,
  metadata jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  constraint agent_messages_session_sequence unique (session_id, sequence_number)
);

alter table public.agent_sessions enable row level security;
alter table public.agent_messages enable row level security;

create policy agent_sessions_owner_or_admin_select on public.agent_sessions
  for select to authenticated
  using (user_id = auth.uid() or public.conveyor_is_admin());

create policy agent_messages_owner_or_admin_select on public.agent_messages
  for select to authenticated
  using (exists (
    select 1 from public.agent_sessions s
     where s.id = session_id and (s.user_id = auth.uid() or public.conveyor_is_admin())
  ));

grant select on public.agent_sessions, public.agent_messages to authenticated;
grant all on public.agent_sessions, public.agent_messages to service_role;
