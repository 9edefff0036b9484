-- A user's erasure forgets their API schedules too (issue 24): forget_user, as 001200 states it,
-- becomes forget_user_rows, and forget_user deletes the schedules first (so none fires a new run
-- for the user meanwhile: the row is locked by the delete) and then forgets the rest, reporting
-- `schedules` beside its other counts. Same rights, same pinned search_path.

alter function conveyor.forget_user(uuid) rename to forget_user_rows;
revoke all on function conveyor.forget_user_rows(uuid) from public, anon, authenticated, service_role;

create function conveyor.forget_user(p_user_id uuid) returns jsonb
language plpgsql security definer
set search_path = conveyor, pg_temp
as $$
declare
  v_rows bigint;
begin
  if p_user_id is null then
    raise exception 'forget_user needs a user id' using errcode = 'null_value_not_allowed';
  end if;
  delete from conveyor.schedules where user_id = p_user_id;
  get diagnostics v_rows = row_count;
  return conveyor.forget_user_rows(p_user_id) || jsonb_build_object('schedules', v_rows);
end
$$;

revoke all on function conveyor.forget_user(uuid) from public, anon, authenticated;
grant execute on function conveyor.forget_user(uuid) to service_role;
