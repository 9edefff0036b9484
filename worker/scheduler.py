"""The beat scheduler: `celery beat -S worker.scheduler:ConveyorScheduler` (set as the app's
default). Every beat process ticks, but only the one holding the Postgres scheduler lock sends;
the others stand by and take over when its connection (its process) dies. What is due comes from
conveyor.ops.jobs.JOBS via conveyor.ops.schedule.Dispatcher, not from Celery's own schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import redis
import structlog
from celery.beat import Scheduler
from kombu.exceptions import OperationalError

from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.ops.jobs import JOBS
from conveyor.ops.schedule import Clock, Dispatcher, Due, utc_now
from conveyor.ops.scheduler_lock import SchedulerLock
from conveyor.settings import Settings

log = structlog.get_logger(__name__)

TICK_SECONDS = 1.0  # the active scheduler looks this often (sending is cheap: a few SELECTs)
STANDBY_SECONDS = 5.0  # a standby tries the lock this often: the longest a takeover waits
# What a publish raises while Redis is down. Celery beat's loop lets any exception end the
# process, so the tick catches these: what was not sent is still due, and goes on a later tick.
BROKER_ERRORS = (OperationalError, redis.exceptions.RedisError, OSError)


class ConveyorScheduler(Scheduler):  # type: ignore[misc]
    """Celery beat's scheduler, replaced by lock + dispatcher. `clock` is injectable (tests)."""

    def __init__(self, app: Any, *args: Any, clock: Clock = utc_now, **kwargs: Any) -> None:
        settings: Settings = app.conveyor_settings
        assert settings.database_url is not None
        self.lock = SchedulerLock(settings.database_url)
        self.db = Database(
            settings.database_url,
            max_size=2,
            statement_timeout_seconds=settings.database_statement_timeout_seconds,
        )
        self.dispatcher = Dispatcher(
            db=self.db,
            jobs=list(JOBS),
            tz=ZoneInfo(settings.timezone),
            send=self.send_due,
            catch_up=timedelta(days=settings.maintenance_catch_up_days),
            clock=clock,
        )
        kwargs.setdefault("max_interval", STANDBY_SECONDS)
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        """The schedule is conveyor.ops.jobs.JOBS; Celery's own entries stay empty."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due if this process holds the lock; returns seconds until the next tick."""
        if not self.lock.try_acquire():
            return STANDBY_SECONDS
        try:
            self.dispatcher.tick()
        # Postgres unreachable, or gone between the lock check and a query.
        except (ServiceUnavailable, psycopg.OperationalError) as exc:
            log.warning("scheduler_tick_failed", error=str(exc))
        except BROKER_ERRORS as exc:
            log.warning("scheduler_send_failed", error=str(exc))
        return TICK_SECONDS

    def send_due(self, due: Due) -> None:
        """Publish the job's task for its period (the worker claims the period before running)."""
        self.app.send_task(
            due.job.task,
            kwargs={"job": due.job.name, "period": due.period_key},
            queue=due.job.queue,
            expires=due.job.expires_seconds,
        )
        log.info("scheduler_sent", job=due.job.name, period=due.period_key)

    def close(self) -> None:
        """Release the lock (a standby takes over within STANDBY_SECONDS) and the pool."""
        self.lock.release()
        self.db.close()
        super().close()
