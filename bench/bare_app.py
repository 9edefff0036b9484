"""The baseline of bench/load.py: the enqueue endpoint a hand-rolled Flask + Celery setup has.

No auth, no validation model, no database: `POST /enqueue` sends a task, `GET /status/<id>` reads
Celery's Redis result backend. Served by the same gunicorn command as Conveyor's web process.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, Response, jsonify, request

QUEUE = "bare"

celery = Celery("bare", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
celery.conf.task_default_queue = QUEUE


@celery.task(name="bare.echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload, as Conveyor's echo agent does."""
    return payload


def create_app() -> Flask:
    """The bare app: enqueue, status, and the health check the bench waits for."""
    app = Flask(__name__)

    @app.get("/api/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.post("/enqueue")
    def enqueue() -> tuple[Response, int]:
        result = echo.delay(request.get_json(silent=True) or {})
        return jsonify({"task_id": result.id, "status": "queued"}), 202

    @app.get("/status/<task_id>")
    def status(task_id: str) -> Response:
        return jsonify({"task_id": task_id, "status": celery.AsyncResult(task_id).state.lower()})

    return app
