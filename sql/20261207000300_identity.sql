-- Identity and tenancy: admins, tenants and their members, an audit trail, and the admin check
-- the RLS policies of every other file use.

create table conveyor.user_roles (
  user_id uuid not null,
  role text not null check (role in ('admin')),
  granted_at timestamptz not null default now(),
  primary key (user_id, role)
);

create table conveyor.tenants (
  id uuid primary key default gen_random_uuid(),
  name text not null check (char_length(name) between 1 and 200),
  -- Set for the tenant created automatically for a first-time user; unique, so two concurrent
  -- first requests create one personal tenant, not two.
  personal_owner uuid unique,
  created_at timestamptz not null default now()
);

create table conveyor.tenant_members (
  tenant_id uuid not null references conveyor.tenants (id) on delete cascade,
  user_id uuid not null,
  role text not null default 'member' check (role in ('owner', 'member')),
  created_at timestamptz not null default now(),
  primary key (tenant_id, user_id)
);

create index tenant_members_user on conveyor.tenant_members (user_id, created_at);

create table conveyor.audit_logs (
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

create index audit_logs_occurred on conveyor.audit_logs (occurred_at);

-- Admin: `app_metadata.role = 'admin'` in the JWT (set by Supabase's admin API) or a user_roles row.
-- Security definer so the check can read user_roles, which users cannot read themselves.
create function conveyor.conveyor_is_admin() returns boolean
  language sql stable security definer
  set search_path = ''
  as $$
    select coalesce((auth.jwt() -> 'app_metadata' ->> 'role') = 'admin', false)
        or exists (
          select 1 from conveyor.user_roles ur where ur.user_id = auth.uid() and ur.role = 'admin'
        )
  $$;

revoke all on function conveyor.conveyor_is_admin() from public, anon;
grant execute on function conveyor.conveyor_is_admin() to authenticated, service_role;


alter table conveyor.user_roles enable row level security;
alter table conveyor.tenants enable row level security;
alter table conveyor.tenant_members enable row level security;
alter table conveyor.audit_logs enable row level security;

create policy user_roles_self_select on conveyor.user_roles
  for select to authenticated using (user_id = auth.uid());

create policy tenants_member_select on conveyor.tenants
  for select to authenticated
  using (exists (
    select 1 from conveyor.tenant_members m where m.tenant_id = id and m.user_id = auth.uid()
  ));

create policy tenant_members_self_select on conveyor.tenant_members
  for select to authenticated using (user_id = auth.uid());

create policy audit_logs_admin_select on conveyor.audit_logs
  for select to authenticated using (conveyor.conveyor_is_admin());

-- Privileges: every statement below states what a role may do; nothing is inherited.
revoke all on conveyor.user_roles, conveyor.tenants, conveyor.tenant_members, conveyor.audit_logs
  from public, anon, authenticated;
grant select on conveyor.user_roles, conveyor.tenants, conveyor.tenant_members,
  conveyor.audit_logs to authenticated;
grant all on conveyor.user_roles, conveyor.tenants, conveyor.tenant_members, conveyor.audit_logs
  to service_role;
-- A table's row type is usable by PUBLIC like any new type; nobody but the service role
-- needs it.
revoke all on type conveyor.user_roles, conveyor.tenants, conveyor.tenant_members,
  conveyor.audit_logs from public, anon, authenticated;
