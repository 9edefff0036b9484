-- Identity and tenancy: admins, tenants and their members, an audit trail, and admin-aware RLS.

create table public.user_roles (
  user_id uuid not null,
  role text not null check (role in ('admin')),
  granted_at timestamptz not null default now(),
  primary key (user_id, role)
);

create table public.tenants (
  id uuid primary key default gen_random_uuid(),
  name text not null check (char_length(name) between 1 and 200),
  -- Set for the tenant created automatically for a first-time user; unique, so two concurrent
  -- first requests create one personal tenant, not two.
  personal_owner uuid unique,
  created_at timestamptz not null default now()
);

create table public.tenant_members (
  tenant_id uuid not null references public.tenants (id) on delete cascade,
  user_id uuid not null,
  role text not null default 'member' check (role in ('owner', 'member')),
  created_at timestamptz not null default now(),
  primary key (tenant_id, user_id)
);

create index tenant_members_user on public.tenant_members (user_id, created_at);

create table public.audit_logs (
  id bigint generated always as identity primary key,
  occurred_at timestamptz not null default now(),
  actor_user_id uuid,
  action text not null,
  outcome text not null check (outcome in ('success', 'failure')),
  subject text,
  ip inet,
  user_agent text check (char_length(user_agent) <= 1000),
  details jsonb not null default '{}'::jsonb
);

create index audit_logs_occurred on public.audit_logs (occurred_at);

-- Admin: `app_metadata.role = 'admin'` in the JWT (set by Supabase's admin API) or a user_roles row.
-- Security definer so the check can read user_roles, which users cannot read themselves.
create function public.conveyor_is_admin() returns boolean
  language sql stable security definer
  set search_path = ''
  as $$
    select coalesce((auth.jwt() -> 'app_metadata' ->> 'role') = 'admin', false)
        or exists (
          select 1 from public.user_roles ur where ur.user_id = auth.uid() and ur.role = 'admin'
        )
  $$;

revoke all on function public.conveyor_is_admin() from public;
grant execute on function public.conveyor_is_admin() to authenticated, service_role;

alter table public.workflow_runs add column cancel_requested_at timestamptz;

drop policy workflow_runs_owner_select on public.workflow_runs;
drop policy workflow_steps_owner_select on public.workflow_steps;
drop policy run_events_owner_select on public.run_events;

create policy workflow_runs_owner_or_admin_select on public.workflow_runs
  for select to authenticated
  using (user_id = auth.uid() or public.conveyor_is_admin());

create policy workflow_steps_owner_or_admin_select on public.workflow_steps
  for select to authenticated
  using (exists (
    select 1 from public.workflow_runs r
     where r.id = run_id and (r.user_id = auth.uid() or public.conveyor_is_admin())
  ));

create policy run_events_owner_or_admin_select on public.run_events
  for select to authenticated
  using (exists (
    select 1 from public.workflow_runs r
     where r.id = run_id and (r.user_id = auth.uid() or public.conveyor_is_admin())
  ));

alter table public.user_roles enable row level security;
alter table public.tenants enable row level security;
alter table public.tenant_members enable row level security;
alter table public.audit_logs enable row level security;

create policy user_roles_self_select on public.user_roles
  for select to authenticated using (user_id = auth.uid());

create policy tenants_member_select on public.tenants
  for select to authenticated
  using (exists (
    select 1 from public.tenant_members m where m.tenant_id = id and m.user_id = auth.uid()
  ));

create policy tenant_members_self_select on public.tenant_members
  for select to authenticated using (user_id = auth.uid());

create policy audit_logs_admin_select on public.audit_logs
  for select to authenticated using (public.conveyor_is_admin());

grant select on public.user_roles, public.tenants, public.tenant_members, public.audit_logs
  to authenticated;
grant all on public.user_roles, public.tenants, public.tenant_members, public.audit_logs
  to service_role;
