"""gunicorn's gthread worker, plus a clean close of open websockets when it is told to stop."""

from __future__ import annotations

import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

GOING_AWAY = "The server is restarting; reconnect with `since` to resume."


class GracefulThreadWorker(ThreadWorker):  # type: ignore[misc]
    """On SIGTERM, gthread lets requests in flight finish; a websocket never finishes by itself,
    so each open one is closed with 1001 and a reason instead of being dropped at the timeout."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        hub = getattr(self.wsgi, "extensions", {}).get("conveyor.hub")
        if hub is not None:
            # A signal handler must not block: the sockets' own threads send the close frames.
            threading.Thread(target=hub.close_all, args=(GOING_AWAY,), daemon=True).start()
