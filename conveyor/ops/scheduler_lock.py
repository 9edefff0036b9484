"""One scheduler fires: a Postgres session advisory lock, held for as long as the holder's
connection lives. When the holder dies its connection closes, Postgres releases the lock, and a
standby scheduler's next try takes it."""

from __future__ import annotations

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

log = structlog.get_logger(__name__)

# pg_try_advisory_lock key: b"cnvbeat" as a big-endian integer, so unrelated locks don't collide.
LOCK_KEY = int.from_bytes(b"cnvbeat", "big")
# A holder whose host vanishes (power loss, a partition) never closes its socket: without these,
# Postgres keeps its session, and the lock, until the kernel's keepalive gives up (2 h+). Postgres
# probes the idle lock session after 5 s and drops it after 3 unanswered probes 2 s apart; the
# standby then takes over (tests/multihost: 14 s after the holder's host dropped off).
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=10000"
)


class SchedulerLock:
    """try_acquire() until it returns True; then keep calling it: it checks the lock is still held
    (a lost connection means a lost lock) and says so."""

    def __init__(self, database_url: str, *, key: int = LOCK_KEY) -> None:
        self._url = database_url
        self._key = key
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Whether this process holds the lock now (taking it if it is free)."""
        try:
            if self._conn is None or self._conn.closed:
                self.held = False
                given = str(conninfo_to_dict(self._url).get("options") or "")
                self._conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=3,
                    # The same, from this side: a lost Postgres is noticed as fast.
                    keepalives_idle=5,
                    keepalives_interval=2,
                    keepalives_count=3,
                    tcp_user_timeout=10_000,
                    options=f"{given} {SERVER_KEEPALIVES}".strip(),
                )
            if self.held:
                self._conn.execute("select 1")  # the session, and so the lock, is still alive
                return True
            row = self._conn.execute("select pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            self.held = bool(row and row[0])
            if self.held:
                log.info("scheduler_lock_acquired")
            return self.held
        except psycopg.Error as exc:
            if self.held:
                log.warning("scheduler_lock_lost", error=str(exc))
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up (closing the session releases it)."""
        self.held = False
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
