"""`/api/admin`: what only admins may see."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, jsonify
from pydantic import Field

from conveyor.auth.tenancy import audit_entries
from conveyor.ops import user_schedules
from conveyor.ops.jobs import job_reports
from conveyor.payload import Payload
from web.auth import require_admin
from web.body import parse_query
from web.context import get_db, get_settings
from web.openapi import contract

bp = Blueprint("admin", __name__)


class AuditLogQuery(Payload):
    """`?limit=&before=<id>` of the audit log listing."""

    limit: int = Field(default=50, ge=1, le=200)
    # Entry ids are bigints.
    before: int | None = Field(default=None, ge=1, le=2**63 - 1)


@bp.get("/api/admin/audit-logs")
@contract({200: "application/json"}, query=AuditLogQuery, auth="admin")
def audit_logs() -> Response:
    """Newest audit entries first: `?limit=` (1..200, default 50) and `?before=<id>` to page."""
    require_admin()
    query = parse_query(AuditLogQuery)
    entries = audit_entries(get_db(), limit=query.limit, before_id=query.before)
    return jsonify({"entries": entries})


@bp.get("/api/admin/maintenance")
@contract({200: "application/json"}, auth="admin")
def maintenance_jobs() -> Response:
    """Admins: each periodic job with its schedule, next fire time and last runs."""
    require_admin()
    settings = get_settings()
    reports = job_reports(get_db(), ZoneInfo(settings.timezone), datetime.now(UTC), runs_each=5)
    return jsonify(
        {
            "timezone": settings.timezone,
            "jobs": [
                {
                    "name": report.job.name,
                    "description": report.job.description,
                    "task": report.job.task,
                    "queue": report.job.queue,
                    "schedule": report.job.cadence.describe(),
                    "next_run_at": report.next_run_at.isoformat(),
                    "current_period": report.current_period,
                    "last_runs": [
                        run.model_dump(mode="json", exclude={"job"}) for run in report.last_runs
                    ],
                }
                for report in reports
            ],
            "schedules": user_schedules.overview(get_db()).model_dump(mode="json"),
        }
    )
