-- A map's items waiting for child runs are unfinished too: the fan-in asks whether any is left
-- (conveyor/runs/fan_in.py) under the run row's lock, so the partial index covers them.
drop index conveyor.run_work_items_unfinished;
create index run_work_items_unfinished on conveyor.run_work_items (run_id, position, item)
  where status in ('pending', 'running', 'waiting');
