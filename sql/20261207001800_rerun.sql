-- Rerun and fork (issue 23): a new run that starts with a finished run's first checkpoints.
-- docs/architecture.md, "Rerun and fork", says why each column is there.

-- The run this one was started from, and the step it was rerun from. No foreign key: the old run
-- may be deleted (retention, erasure) while its rerun lives on, and a key would make every run
-- delete scan for referrers.
alter table conveyor.workflow_runs
  add column rerun_of uuid,
  add column rerun_from_step text check (char_length(rerun_from_step) <= 64);

-- spec_hash: what made the checkpoint (conveyor/runs/fingerprints.py), written with it, so a
-- rerun reuses it only while the definition still makes that step the same way.
-- reused_from: the run whose execution this completed row was copied from (not run, not charged
-- in this run).
alter table conveyor.workflow_steps
  add column spec_hash text,
  add column reused_from uuid;
