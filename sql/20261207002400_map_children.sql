-- A map's item may be a child workflow (issue 23): the item is `waiting` for its child run, whose
-- end records the item (conveyor/runs/item_children.py). A run whose only unfinished items wait
-- for children is itself `waiting`, holding no worker and no lease.

alter table conveyor.run_work_items drop constraint run_work_items_status_check;
alter table conveyor.run_work_items add constraint run_work_items_status_check
  check (status in ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled'));
alter table conveyor.run_work_items add column child_run_id uuid;
-- The item of the parent's map step a child run is for (null: the step itself awaits it).
alter table conveyor.workflow_runs add column parent_item integer
  check (parent_item between 0 and 9999);
