-- A user's waiting runs, for the status snapshot a `user:` websocket subscription starts with
-- (web/realtime_protocol.py): read beside the queued and running ones, each through its own
-- partial index, instead of scanning the user's whole history.
create index workflow_runs_user_waiting on conveyor.workflow_runs (user_id, created_at)
  where status = 'waiting';
