"""WORKER_METRICS_PORT: a worker's main process serves Prometheus text at `:<port>/metrics`.

A worker on a host (or container) of its own has no web process beside it to read its samples.
With PROMETHEUS_MULTIPROC_DIR set, the prefork children write their samples there and a scrape
adds them up (conveyor.metrics.exposition), so one port covers the whole worker. METRICS_TOKEN, when
set, is required here as at web's `/metrics`.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from celery import bootsteps

from conveyor import metrics

log = structlog.get_logger(__name__)

BIND_HOST = "0.0.0.0"  # noqa: S104 - scraped from other hosts; a worker's pod or container
METRICS_PATH = "/metrics"


class MetricsHandler(BaseHTTPRequestHandler):
    """Answers `GET /metrics` with the exposition; anything else is a JSON 404."""

    token: bytes | None = None  # set on the server's subclass

    def do_GET(self) -> None:
        """The samples of this worker's processes, or a JSON error."""
        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._error(404, "NOT_FOUND", f"Only {METRICS_PATH} is served here.")
            return
        if self.token is not None:
            sent = self.headers.get("Authorization", "").removeprefix("Bearer ").strip().encode()
            if not hmac.compare_digest(sent, self.token):
                self._error(401, "UNAUTHORIZED", "Send Authorization: Bearer <METRICS_TOKEN>.")
                return
        body, content_type = metrics.exposition()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message, "code": code}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a scrape every few seconds would fill the worker's log."""


class MetricsHTTPServer:
    """An HTTP server in a daemon thread, bound when started; port 0 picks a free port."""

    def __init__(self, port: int, *, host: str = BIND_HOST, token: str | None = None) -> None:
        self._address = (host, port)
        self._handler = type(
            "BoundMetricsHandler",
            (MetricsHandler,),
            {"token": token.encode() if token is not None else None},
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve; a port already taken raises OSError, which stops the worker's start."""
        self._server = ThreadingHTTPServer(self._address, self._handler)
        self._server.daemon_threads = True  # a stuck scraper never holds up the worker's exit
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="conveyor-metrics-http", daemon=True
        )
        self._thread.start()
        log.info("worker_metrics_serving", port=self.port, path=METRICS_PATH)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        self._server = None


class MetricsServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a MetricsHTTPServer for the worker's lifetime when WORKER_METRICS_PORT is set.
    Register it with `app.steps["worker"].add(MetricsServer)`."""

    # Start after the pool, as the heartbeat does: prefork children are not forked beside a thread.
    requires = ("celery.worker.components:Pool",)

    def include_if(self, worker: Any) -> bool:
        """Only when a port is configured."""
        return worker.app.conveyor_settings.worker_metrics_port is not None

    def create(self, worker: Any) -> MetricsHTTPServer:
        """The server for the configured port (it binds when the step starts, after the pool)."""
        settings = worker.app.conveyor_settings
        if not os.environ.get(metrics.MULTIPROC_ENV) and "prefork" in str(worker.pool_cls):
            log.warning(
                "worker_metrics_main_process_only",
                reason=f"{metrics.MULTIPROC_ENV} is unset, so pool children's samples are not seen",
            )
        # compose passes an unset METRICS_TOKEN as "": no token then, as at web's /metrics.
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        return MetricsHTTPServer(settings.worker_metrics_port, token=token or None)
