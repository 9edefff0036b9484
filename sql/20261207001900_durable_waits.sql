-- Durable waits (issue 23): a run can wait (sleep, or for a signal) without holding a worker.
-- The run row is the timer: `waiting` with `wake_at`, resumed by the beat job
-- `wake_waiting_runs` or by a signal with one conditional update (conveyor/runs/waits.py).
-- Admission (admit_run) still counts only `queued` and `running` runs as in flight: a waiting run
-- holds no worker (docs/architecture.md, "Durable waits").

alter table conveyor.workflow_runs drop constraint workflow_runs_status_check;
alter table conveyor.workflow_runs add constraint workflow_runs_status_check
  check (status in ('queued', 'running', 'waiting', 'completed', 'failed', 'cancelled'));
alter table conveyor.workflow_runs
  -- When the beat job resumes the run (a sleep's end, an event wait's deadline); null: no timer.
  add column wake_at timestamptz,
  add column waiting_since timestamptz,
  -- Time spent waiting so far: the run timeout measures execution, not waits.
  add column waited_seconds double precision not null default 0 check (waited_seconds >= 0);

alter table conveyor.workflow_steps drop constraint workflow_steps_status_check;
alter table conveyor.workflow_steps add constraint workflow_steps_status_check
  check (status in ('pending', 'running', 'waiting', 'completed', 'failed', 'skipped',
                    'cancelled'));
alter table conveyor.workflow_steps
  add column wake_at timestamptz,
  -- What a waiting step waits for: {"kind": "sleep"} or {"kind": "event", "event", "match",
  -- "on_timeout"}.
  add column wait jsonb;

-- The beat job's scan: only waiting runs, by when they are due.
create index workflow_runs_waking on conveyor.workflow_runs (wake_at)
  where status = 'waiting';
