"""What operators run and read: the periodic jobs and their schedule, maintenance, migrations,
status, analytics, erasure."""

from conveyor.ops.broker_queues import BrokerUnreachable, QueueReader, queue_reader
from conveyor.ops.status import (
    HEARTBEAT_SECONDS,
    AdminRunsQuery,
    AdminRunSummary,
    QueueReport,
    QuotaUsage,
    RunStats,
    RunStatsQuery,
    WorkerHeartbeat,
    clear_heartbeat,
    list_all_runs,
    queue_report,
    quota_usage,
    run_stats,
    write_heartbeat,
)

__all__ = [
    "HEARTBEAT_SECONDS",
    "AdminRunSummary",
    "AdminRunsQuery",
    "BrokerUnreachable",
    "QueueReader",
    "QueueReport",
    "QuotaUsage",
    "RunStats",
    "RunStatsQuery",
    "WorkerHeartbeat",
    "clear_heartbeat",
    "list_all_runs",
    "queue_reader",
    "queue_report",
    "quota_usage",
    "run_stats",
    "write_heartbeat",
]
