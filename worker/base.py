"""The task base class: per-app resources, logging context, retry with backoff and jitter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from celery import Task

from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.events.run_events import EventPublisher
from conveyor.ops.job_runs import run_once
from conveyor.runs.artifacts import ArtifactStore, store_for
from conveyor.settings import Settings
from conveyor.workflows.catalog import load_catalog


@dataclass
class WorkerResources:
    """What a task body needs, built once per Celery app and process."""

    settings: Settings
    db: Database
    publisher: EventPublisher
    store: ArtifactStore


def resources_for(app: Any) -> WorkerResources:
    """The app's resources, created on first use (after fork, so pools are per process)."""
    existing: WorkerResources | None = getattr(app, "conveyor_resources", None)
    if existing is None:
        settings: Settings = app.conveyor_settings
        assert settings.database_url is not None
        assert settings.redis_url is not None
        load_catalog(settings)
        existing = WorkerResources(
            settings=settings,
            db=Database(
                settings.database_url,
                max_size=4,
                statement_timeout_seconds=settings.database_statement_timeout_seconds,
                # A worker transaction idle for a whole lease is a lost worker's: Postgres ends
                # it, so the run row is free for the successor once the lease has expired.
                idle_in_transaction_seconds=settings.run_lease_seconds,
            ),
            publisher=EventPublisher(settings.redis_url),
            store=store_for(settings),
        )
        app.conveyor_resources = existing
    return existing


class ConveyorTask(Task):  # type: ignore[misc]
    """Base for every Conveyor task: binds log context and retries when a dependency is down."""

    # Postgres or Redis briefly unreachable: retry with exponential backoff and jitter.
    autoretry_for = (ServiceUnavailable,)
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True
    max_retries = 20
    acks_late = True

    @property
    def resources(self) -> WorkerResources:
        """Database, publisher and settings of this task's app."""
        return resources_for(self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task_id=self.request.id, task=self.name)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.clear_contextvars()


class PeriodicTask(ConveyorTask):
    """Base for tasks the scheduler fires with `job=` and `period=`: the body (which takes
    `period`) runs only if this call claims (job, period) in maintenance_runs, so exactly once
    per period; a refused claim is recorded as skipped. Without `job` (tests, by hand) it runs."""

    def __call__(self, *args: Any, job: str | None = None, **kwargs: Any) -> Any:
        period = kwargs.get("period")
        if job is None or period is None:
            return super().__call__(*args, **kwargs)
        outcome = run_once(
            self.resources.db,
            job,
            period,
            lambda: as_counts(super(PeriodicTask, self).__call__(*args, **kwargs)),
            claimed_by=self.request.hostname,
        )
        return outcome.model_dump()


def as_counts(result: Any) -> dict[str, int]:
    """A task's return value as the counts maintenance_runs records."""
    if isinstance(result, dict):
        return {str(k): int(v) for k, v in result.items() if isinstance(v, int | bool)}
    if isinstance(result, int):
        return {"count": result}
    return {}
