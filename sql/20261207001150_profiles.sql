-- Profiles: one JSON document per user (seed 004's `profiles`, its clients' CV data), read by its
-- owner under RLS. Writes go through the service role, keyed by the verified user, like every
-- other write of Conveyor's. No foreign key to auth.users: forget_user
-- (20261207001200_user_erasure.sql) deletes the profile with the user's other rows.

create table conveyor.profiles (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null unique,
  profile_data jsonb not null check (jsonb_typeof(profile_data) = 'object'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

alter table conveyor.profiles enable row level security;

create policy profiles_owner_or_admin_select on conveyor.profiles
  for select to authenticated using (user_id = auth.uid() or conveyor.conveyor_is_admin());

revoke all on conveyor.profiles from public, anon, authenticated;
grant select on conveyor.profiles to authenticated;
grant all on conveyor.profiles to service_role;
revoke all on type conveyor.profiles from public, anon, authenticated;
