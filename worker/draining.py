"""SIGTERM drains a worker: running runs get WORKER_DRAIN_SECONDS, then go back to the queue.

Celery's warm shutdown stops consuming and waits for running tasks, however long they take, and
tells only the main process (`worker_shutting_down`). Solo and thread pools run tasks in that
process; prefork children are told with SIGUSR2, forwarded here (SIGTERM itself would kill them).
"""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from typing import Any

from billiard.process import active_children
from celery import signals

from conveyor.runs import shutdown

DRAIN_SIGNAL = signal.SIGUSR2


def drain(*_: Any) -> None:
    """Start draining this process (a signal handler)."""
    shutdown.DRAIN.request()


@signals.worker_shutting_down.connect
def drain_on_shutdown(**_: Any) -> None:
    """In the main process, on warm shutdown: drain here and in every pool child."""
    drain()
    for child in active_children():
        if child.pid is not None:
            with suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(child.pid, DRAIN_SIGNAL)


@signals.worker_process_init.connect
def listen_for_drain(**_: Any) -> None:
    """In each prefork child: SIGUSR2 means the worker is shutting down."""
    signal.signal(DRAIN_SIGNAL, drain)
