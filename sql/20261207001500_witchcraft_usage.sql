-- Seed 000, Witchcraft's auth and AI usage backend (issue 22): usage recorded only within the
-- month's quota, and the AI figures a session message carries.

-- Record one AI request exactly once, as record_usage does, but only if its tokens and cost fit
-- in this month's quota (the check Witchcraft's check_and_consume_quota made before recording).
-- Recording first and checking the period row it just updated (and holds locked) is the same
-- test as `used + n <= quota`, takes the locks in record_usage's order (event key, period,
-- account), and counts the request once: checking with check_and_consume_quota and then recording
-- would add it to the period twice. Over quota, the block's work is undone and quota_exceeded is
-- true; a repeated key is answered from the first recording without a new check.
create function conveyor.record_usage_within_quota(
  p_user uuid,
  p_idempotency_key text,
  p_provider text,
  p_model text,
  p_prompt_tokens integer,
  p_completion_tokens integer,
  p_input_cost bigint default null,
  p_output_cost bigint default null,
  p_agent_mode text default null,
  p_latency_ms integer default null,
  p_session_id uuid default null,
  p_success boolean default true,
  p_error text default null,
  p_occurred_at timestamptz default now()
) returns table (
  event_id bigint, duplicate boolean, credits_charged bigint, threshold_crossed smallint,
  quota_exceeded boolean
)
language plpgsql as $$
declare
  v_event bigint;
  v_duplicate boolean;
  v_charged bigint;
  v_percent smallint;
  v_over boolean;
begin
  begin
    select r.event_id, r.duplicate, r.credits_charged, r.threshold_crossed
      into v_event, v_duplicate, v_charged, v_percent
      from conveyor.record_usage(
        p_user => p_user, p_idempotency_key => p_idempotency_key, p_provider => p_provider,
        p_model => p_model, p_prompt_tokens => p_prompt_tokens,
        p_completion_tokens => p_completion_tokens, p_input_cost => p_input_cost,
        p_output_cost => p_output_cost, p_agent_mode => p_agent_mode,
        p_latency_ms => p_latency_ms, p_session_id => p_session_id, p_success => p_success,
        p_error => p_error, p_occurred_at => p_occurred_at) r;
    if not v_duplicate then
      select u.tokens_used > u.token_quota or u.cost_used_micro_usd > u.cost_quota_micro_usd
        into v_over
        from conveyor.usage_periods u
       where u.user_id = p_user
         and u.period_start = conveyor.conveyor_period_start(p_occurred_at);
      if v_over then
        raise exception 'usage over quota' using errcode = 'CVQ01';
      end if;
    end if;
  exception when sqlstate 'CVQ01' then
    return query select null::bigint, false, 0::bigint, 0::smallint, true;
    return;
  end;
  return query select v_event, v_duplicate, v_charged, v_percent, false;
end
$$;

-- Witchcraft's agent_messages row carries the AI figures of the message (`tokens`, `cost_usd`,
-- `ai_request_id`); here they sit beside Conveyor's columns. usage_event_id is the usage event
-- the message's own figures were recorded as (null when they were not: no figures, or
-- ai_request_id names the event track-usage recorded). An idempotency key makes a retried
-- message one message. No foreign keys to usage_events: retention purges events, the
-- conversation stays.
alter table conveyor.agent_messages
  add column tokens integer check (tokens >= 0),
  add column cost_micro_usd bigint check (cost_micro_usd >= 0),
  add column ai_request_id bigint,
  add column usage_event_id bigint,
  add column idempotency_key text check (char_length(idempotency_key) between 1 and 255);

create unique index agent_messages_session_idempotency_key
  on conveyor.agent_messages (session_id, idempotency_key) where idempotency_key is not null;

revoke all on function conveyor.record_usage_within_quota(
  uuid, text, text, text, integer, integer, bigint, bigint, text, integer, uuid, boolean, text,
  timestamptz)
  from public, anon, authenticated;
grant execute on function conveyor.record_usage_within_quota(
  uuid, text, text, text, integer, integer, bigint, bigint, text, integer, uuid, boolean, text,
  timestamptz)
  to service_role;
