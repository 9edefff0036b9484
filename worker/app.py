"""The worker and beat entry point: `celery -A worker.app worker|beat` finds `app` here."""

from __future__ import annotations

from conveyor.logs import configure_logging
from conveyor.settings import get_settings
from worker import draining  # noqa: F401 - SIGTERM hands running runs back
from worker.celery_app import create_celery

settings = get_settings()
configure_logging(settings)
# Beat keeps its schedule file here; without embedded services nothing else creates the folder.
settings.data_dir.mkdir(parents=True, exist_ok=True)
app = create_celery(settings)
