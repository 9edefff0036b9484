"""`/api/admin`: what only admins may see."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, jsonify, request

from conveyor import maintenance_runs
from conveyor.errors import InvalidInput
from conveyor.identity import audit_entries
from web.auth import require_admin
from web.context import get_db, get_settings

bp = Blueprint("admin", __name__)


@bp.get("/api/admin/audit-logs")
def audit_logs() -> Response:
    """Newest audit entries first: `?limit=` (1..200, default 50) and `?before=<id>` to page."""
    require_admin()
    try:
        limit = int(request.args.get("limit", "50"))
        before = int(request.args["before"]) if "before" in request.args else None
    except ValueError as exc:
        raise InvalidInput("limit and before must be integers.") from exc
    if not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200.")
    entries = audit_entries(get_db(), limit=limit, before_id=before)
    return jsonify({"entries": entries})


@bp.get("/api/admin/maintenance")
def maintenance_jobs() -> Response:
    """Admins: each periodic job with its schedule, next fire time and last runs."""
    import beat_schedule

    require_admin()
    settings = get_settings()
    tz = ZoneInfo(settings.timezone)
    now = datetime.now(UTC)
    recent = maintenance_runs.recent_runs(get_db(), limit=5)
    return jsonify(
        {
            "timezone": settings.timezone,
            "jobs": [
                {
                    "name": job.name,
                    "description": job.description,
                    "task": job.task,
                    "queue": job.queue,
                    "schedule": job.cadence.describe(),
                    "next_run_at": job.cadence.next_due(now, tz).isoformat(),
                    "current_period": job.cadence.period_key(job.cadence.last_due(now, tz), tz),
                    "last_runs": [
                        run.model_dump(mode="json", exclude={"job"})
                        for run in recent
                        if run.job == job.name
                    ],
                }
                for job in beat_schedule.JOBS
            ],
        }
    )
