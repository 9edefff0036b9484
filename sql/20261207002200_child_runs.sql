-- Child workflows (issue 23): a `workflow` step starts another workflow for the same user as a
-- child run, linked to its parent. docs/architecture.md, "Child runs", says why each column is
-- there (conveyor/runs/children.py).

-- The run that started this one and the position of the step that did; parent_awaits: the
-- parent waits for this child (its end resumes the parent, cancelling the parent cancels it),
-- false for a detached child. No foreign key, as for rerun_of: retention or erasure may delete
-- runs in any order, and a key would make every run delete scan for referrers.
alter table conveyor.workflow_runs
  add column parent_run_id uuid,
  add column parent_step integer check (parent_step >= 0),
  add column parent_awaits boolean not null default false,
  add constraint workflow_runs_parent_complete
    check ((parent_run_id is null) = (parent_step is null));

-- A parent's children: the run detail's list, the cancel cascade, the usage totals.
create index workflow_runs_children on conveyor.workflow_runs (parent_run_id, parent_step)
  where parent_run_id is not null;

-- A parent's view sums its children's usage by run (conveyor/runs/children.py, children_of):
-- without this, each child's total scans the user's usage.
create index usage_events_run on conveyor.usage_events (run_id) where run_id is not null;
