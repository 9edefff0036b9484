-- The step-by-step engine: every step of a run has a row from submit on (pending), carries its
-- usage and, for large outputs, a reference to where the output is stored. A run may belong to an
-- agent session, to which it appends its reply.

alter table public.workflow_steps
  add column error_code text,
  add column usage jsonb,
  add column output_url text;

alter table public.workflow_runs
  add column session_id uuid references public.agent_sessions (id) on delete set null,
  add column output_url text;

create index workflow_runs_session on public.workflow_runs (session_id)
  where session_id is not null;
