"""What operators run and read: the periodic jobs and their schedule, maintenance, migrations,
status, analytics, erasure."""

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
    queue_depths,
    queue_report,
    quota_usage,
    run_stats,
    write_heartbeat,
)

__all__ = [
    "HEARTBEAT_SECONDS",
    "AdminRunSummary",
    "AdminRunsQuery",
    "QueueReport",
    "QuotaUsage",
    "RunStats",
    "RunStatsQuery",
    "WorkerHeartbeat",
    "clear_heartbeat",
    "list_all_runs",
    "queue_depths",
    "queue_report",
    "quota_usage",
    "run_stats",
    "write_heartbeat",
]
