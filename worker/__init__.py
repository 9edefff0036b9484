"""The Celery side of Conveyor: the app, the task base class and worker signals."""
