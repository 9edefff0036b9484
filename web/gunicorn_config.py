"""gunicorn server hooks, loaded by `conveyor run`'s command (`--config python:web.gunicorn_config`)
and the Docker image."""

from __future__ import annotations

from typing import Any

from conveyor import metrics


def child_exit(server: Any, worker: Any) -> None:
    """A web worker that exited (crashed, killed, recycled) drops its live gauges, such as its
    open websockets, which would otherwise be summed into every later scrape."""
    metrics.forget_process(worker.pid)
