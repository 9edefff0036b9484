"""The periodic schedule as data: what runs when, on which queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conveyor.constants import TASK_REQUEUE_STALE_RUNS

SCHEDULE: dict[str, dict[str, Any]] = {
    "requeue-stale-runs": {
        "task": TASK_REQUEUE_STALE_RUNS,
        "schedule": timedelta(seconds=30),
        # A missed tick is worthless once the next one is due.
        "options": {"queue": "maintenance", "expires": 25},
    },
}
