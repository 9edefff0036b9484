"""The worker and beat entry point: `celery -A worker.app worker|beat` finds `app` here."""

from __future__ import annotations

from conveyor.logs import configure_logging
from conveyor.settings import get_settings
from worker.celery_app import create_celery

configure_logging(get_settings())
app = create_celery(get_settings())
