"""`/api/admin/{queues,runs,run-stats,quota-usage,flow}`: what the operators' dashboard reads."""

from __future__ import annotations

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify

from conveyor import ops
from conveyor.ops.flow import FlowReport, flow_report
from conveyor.payload import Payload
from web.auth import require_admin
from web.body import parse_query
from web.context import get_db, get_settings
from web.openapi import contract, listing

bp = Blueprint("ops", __name__)


class NoParams(Payload):
    """An endpoint without query parameters refuses any, so a typo is not silently ignored."""


@bp.get("/api/admin/queues")
@contract({200: ops.QueueReport}, auth="admin")
def queues() -> Response:
    """Admins: messages waiting per queue, unacked messages, and workers with a live heartbeat."""
    require_admin()
    reader: ops.QueueReader = current_app.extensions["conveyor.ops_queues"]
    client: redis.Redis = current_app.extensions["conveyor.ops_redis"]
    return jsonify(ops.queue_report(reader, client).model_dump(mode="json"))


@bp.get("/api/admin/runs")
@contract({200: listing("runs", ops.AdminRunSummary)}, query=ops.AdminRunsQuery, auth="admin")
def runs() -> Response:
    """Admins: everyone's runs, newest first: `?status=&workflow_id=&user_id=&limit=&cursor=`."""
    require_admin()
    query = parse_query(ops.AdminRunsQuery)
    page, next_cursor = ops.list_all_runs(get_db(), query)
    return jsonify({"runs": [r.model_dump(mode="json") for r in page], "next_cursor": next_cursor})


@bp.get("/api/admin/run-stats")
@contract({200: ops.RunStats}, query=ops.RunStatsQuery, auth="admin")
def run_stats() -> Response:
    """Admins: runs by status created in the last `?hours=` (1..2160, default 24), and every
    unfinished run."""
    require_admin()
    query = parse_query(ops.RunStatsQuery)
    return jsonify(ops.run_stats(get_db(), hours=query.hours).model_dump(mode="json"))


@bp.get("/api/admin/quota-usage")
@contract({200: ops.QuotaUsage}, query=NoParams, auth="admin")
def quota_usage() -> Response:
    """Admins: per plan, users and tokens/cost used against quota this month (UTC)."""
    require_admin()
    parse_query(NoParams)
    return jsonify(ops.quota_usage(get_db()).model_dump(mode="json"))


@bp.get("/api/admin/flow")
@contract({200: FlowReport}, query=NoParams, auth="admin")
def flow() -> Response:
    """Admins: runs waiting by reason, held runs by concurrency key, the LLM rate limits in force
    and the credits held for model calls in progress."""
    require_admin()
    parse_query(NoParams)
    return jsonify(flow_report(get_db(), get_settings()).model_dump(mode="json"))


def init_app(app: Flask, redis_url: str, broker_url: str) -> None:
    """Register the routes with their own short-timeout Redis client and broker reader."""
    app.extensions["conveyor.ops_redis"] = redis.Redis.from_url(
        redis_url, socket_connect_timeout=1, socket_timeout=2
    )
    app.extensions["conveyor.ops_queues"] = ops.queue_reader(broker_url, timeout=2)
    app.register_blueprint(bp)
