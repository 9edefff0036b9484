-- Seed 003, the Django + Supabase template (issue 22): requests a day per plan, and credit rates
-- keyed by URL path beside the job rates.
--
-- plans.daily_request_limit counts runs admitted (admit_run, through runs_per_day). The template
-- limits every API request it serves, a different quantity, with other numbers: its limits get a
-- column of their own (counted in Redis by the seed-003 adapter, conveyor/auth/daily_limits.py)
-- instead of replacing the run limits native clients already rely on.
alter table conveyor.plans
  add column daily_api_request_limit integer not null default 100
    check (daily_api_request_limit >= 0);

update conveyor.plans p set daily_api_request_limit = v.requests
  from (values ('free', 100), ('basic', 1000), ('premium', 5000), ('enterprise', 10000))
       as v (id, requests)
 where p.id = v.id;

-- The template's CreditUsageRate has an integer id and an is_active flag. Rows keyed by a path
-- (`/api/credits/`, `/api/users/{user_id}/add_credits/`) are charged per request by the adapter,
-- which honours the flag; admit_run reads job rows (`agent:*`, ...) by key and ignores it, so only
-- path rows may be switched off.
alter table conveyor.credit_rates
  add column id bigint generated always as identity unique,
  add column is_active boolean not null default true,
  add constraint credit_rates_only_path_rates_inactive check (is_active or endpoint like '/%');
