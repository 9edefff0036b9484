"""A worker asked to stop drains: a running step gets a grace period, then its run goes back to
the queue for another worker, which resumes it from its last checkpoint.

The state is per process because a shutdown is: the worker's signal handler (worker/draining.py)
sets it, and every run this process executes reads it when it checks in.
"""

from __future__ import annotations

import time


class Drain:
    """When this process was asked to stop, if it was."""

    def __init__(self) -> None:
        self._since: float | None = None

    def request(self) -> None:
        """Start draining (safe in a signal handler; a second request changes nothing)."""
        if self._since is None:
            self._since = time.monotonic()

    def since(self) -> float | None:
        """time.monotonic() when draining began, or None."""
        return self._since


DRAIN = Drain()
