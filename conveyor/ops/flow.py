"""Flow control as operators see it: why runs are waiting, which keys hold queued runs, the rate
limits in force and the credits held for model calls (`/metrics`, `/api/admin/flow`, the
dashboard)."""

from __future__ import annotations

import redis
from pydantic import BaseModel

from conveyor.db import Database
from conveyor.ledger.reservations import HeldReservation, reservations_held
from conveyor.runs.dispatch import KeyQueue, queued_by_key
from conveyor.settings import Settings
from conveyor.steps.rate_limits import LimitUsage, limits_in_force

# One row per reason. A held run (not yet dispatched) waits for its key's slot or its debounce
# window; a `waiting` run waits for what its waiting step says (sleep, event, approval, child,
# credits, rate_limit); a run parked on a map of child runs has no waiting step of its own.
RUNS_WAITING_SQL = """
select case when r.not_before > now() then 'debounce' else 'concurrency' end as reason,
       count(*) as n
  from workflow_runs r
 where r.status = 'queued' and r.dispatched_at is null
 group by 1
union all
select coalesce(s.wait ->> 'kind', 'children') as reason, count(*) as n
  from workflow_runs r
  left join workflow_steps s on s.run_id = r.id and s.status = 'waiting'
 where r.status = 'waiting'
 group by 1
"""


def runs_waiting(db: Database) -> dict[str, int]:
    """Runs not executing, by what they wait for: `conveyor_runs_waiting{reason}`."""
    with db.single_statement() as conn:
        rows = conn.execute(RUNS_WAITING_SQL).fetchall()
    waiting: dict[str, int] = {}
    for row in rows:
        waiting[row["reason"]] = waiting.get(row["reason"], 0) + int(row["n"])
    return waiting


class FlowReport(BaseModel):
    """`GET /api/admin/flow`: runs waiting by reason, held runs by key, the rate limits in force
    and the credits held for model calls in progress."""

    runs_waiting: dict[str, int]
    queued_by_key: list[KeyQueue]
    rate_limits: list[LimitUsage]
    reservations: list[HeldReservation]


def flow_report(db: Database, settings: Settings, *, limit: int = 50) -> FlowReport:
    """Everything the dashboard's flow-control card shows, each list at most `limit` long."""
    return FlowReport(
        runs_waiting=runs_waiting(db),
        queued_by_key=queued_by_key(db, limit),
        rate_limits=rate_limits(settings)[:limit],
        reservations=reservations_held(db, limit),
    )


def rate_limits(settings: Settings) -> list[LimitUsage]:
    """The limits in force; none listed while Redis does not answer (the report still loads)."""
    try:
        return limits_in_force(settings)
    except redis.RedisError:
        return []
