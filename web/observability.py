"""Request context for logs (request_id, user_id), HTTP metrics, and `GET /metrics`."""

from __future__ import annotations

import hmac
import re
import time
import uuid

import psycopg
import structlog
from flask import Blueprint, Flask, Response, current_app, g, request

from conveyor import metrics, ops
from conveyor.errors import ServiceUnavailable, Unauthorized
from conveyor.ops import flow
from web.context import get_db, get_settings
from web.openapi import contract

bp = Blueprint("observability", __name__)

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's request id is kept only if it looks like one (it ends up in every log line).
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def begin_request() -> None:
    """Bind a request id (the caller's, if sane) to every log line of this request."""
    g.started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=g.request_id, method=request.method, path=request.path
    )


def end_request(response: Response) -> Response:
    """Count the request by route template (not raw path: ids would explode the series)."""
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    started = g.get("started")
    if started is not None:
        metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
    if "request_id" in g:
        response.headers[REQUEST_ID_HEADER] = g.request_id
    return response


def forget_request(_: BaseException | None) -> None:
    """Unbind the request's log context from this thread."""
    structlog.contextvars.clear_contextvars()


@bp.get("/metrics")
@contract({200: "text/plain"}, auth="metrics")
def scrape() -> Response:
    """Prometheus exposition of every process's metrics plus queue depths; with METRICS_TOKEN set,
    only for `Authorization: Bearer <METRICS_TOKEN>`."""
    token = get_settings().metrics_token
    if token is not None:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
            raise Unauthorized("Send Authorization: Bearer <METRICS_TOKEN> to read metrics.")
    body, content_type = metrics.exposition(queue_depths, runs_waiting)
    return Response(body, content_type=content_type)


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue (empty when the broker is unreachable: a scrape never
    fails)."""
    reader: ops.QueueReader = current_app.extensions["conveyor.metrics_queues"]
    try:
        return reader.depths()
    except ops.BrokerUnreachable:
        return {}


def runs_waiting() -> dict[str, int]:
    """Runs held or parked, by reason (empty when Postgres is unreachable: a scrape never fails)."""
    try:
        return flow.runs_waiting(get_db())
    except (ServiceUnavailable, psycopg.Error):
        return {}


def init_app(app: Flask, broker_url: str) -> None:
    """Install the request hooks and the /metrics route (with its own short-timeout reader of
    the broker's queues)."""
    app.extensions["conveyor.metrics_queues"] = ops.queue_reader(broker_url, timeout=1)
    app.before_request(begin_request)
    app.after_request(end_request)
    app.teardown_request(forget_request)
    app.register_blueprint(bp)
