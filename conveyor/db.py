"""Postgres access: one connection pool per process, service-role and RLS-scoped transactions."""

from __future__ import annotations

import json
import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from conveyor.constants import SCHEMA
from conveyor.errors import ServiceUnavailable

Connection = psycopg.Connection[DictRow]
Cursor = psycopg.Cursor[DictRow]

CONNECT_TIMEOUT_SECONDS = 5


def check_if_disturbed(conn: Connection) -> None:
    """The pool's check before it hands a connection out: a round trip only when the idle
    socket is readable, which is how a server that ended the session (a restart, a terminated
    backend) shows; a healthy idle connection has nothing to say. Checking every checkout with
    a query cost each request a round trip (bench/load.py)."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def connect_options(
    url: str, statement_timeout_seconds: float, idle_in_transaction_seconds: float = 0
) -> dict[str, str]:
    """libpq startup options for Conveyor's connections, applied by the server to the whole
    session at no round trip: search_path = Conveyor's schema, so its SQL names tables plainly
    and never reaches the host app's objects in `public`; the statement timeout and the idle in
    transaction timeout (0: none). Options the URL already carries are kept, and win."""
    given = str(conninfo_to_dict(url).get("options") or "")
    options = [given, f"-c search_path={SCHEMA}"]
    if statement_timeout_seconds > 0 and "statement_timeout" not in given:
        milliseconds = max(1, round(statement_timeout_seconds * 1000))
        options.append(f"-c statement_timeout={milliseconds}")
    # A client that vanishes inside a transaction (its host cut off) keeps its row locks until
    # the server's TCP keepalive notices (~2 h): a run row it locked could not be claimed.
    if idle_in_transaction_seconds > 0 and "idle_in_transaction_session_timeout" not in given:
        milliseconds = max(1, round(idle_in_transaction_seconds * 1000))
        options.append(f"-c idle_in_transaction_session_timeout={milliseconds}")
    return {"options": " ".join(option for option in options if option)}


def ensure_search_path(conn: psycopg.Connection[Any]) -> None:
    """Make sure a new connection resolves plain names in Conveyor's schema. Some poolers drop
    startup options (Supavisor, PgBouncer with ignore_startup_parameters); a session left on the
    server's default search_path would read and write the host app's tables of the same name
    (`public.user_roles`). One round trip per new connection, none per checkout."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute("select current_schema() = %s", (SCHEMA,)).fetchone()
    if not (row and row[0]):
        conn.execute(f"set search_path to {SCHEMA}")
    if not conn.autocommit:
        conn.commit()


def sql_connection(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection outside a pool, with the session settings of Conveyor's pools (its
    schema first on the search_path): for the CLI's one-off work, scripts and tests."""
    settings: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **kwargs}
    settings.update(connect_options(url, 0))
    conn = psycopg.connect(url, **settings)
    try:
        ensure_search_path(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class Database:
    """A lazily opened pool for one database URL, reopened after a fork (prefork, gunicorn)."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_timeout_seconds: float = 0,
        idle_in_transaction_seconds: float = 0,
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._connect_options = connect_options(
            url, statement_timeout_seconds, idle_in_transaction_seconds
        )
        self._pool: ConnectionPool[Connection] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool[Connection]:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    self._pool = ConnectionPool(
                        self.url,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        kwargs={
                            "row_factory": dict_row,
                            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                            **self._connect_options,
                        },
                        timeout=CONNECT_TIMEOUT_SECONDS,
                        check=check_if_disturbed,
                        configure=ensure_search_path,
                        open=True,
                        name="conveyor",
                    )
                    self._pid = os.getpid()
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection; unreachable Postgres becomes ServiceUnavailable."""
        try:
            with self._get_pool().connection() as conn:
                yield conn
        except psycopg.errors.TransactionRollback:
            raise  # deadlock or serialization failure: the caller may retry; the server is fine
        except psycopg.errors.QueryCanceled as exc:
            raise ServiceUnavailable(
                "The database cancelled a statement that ran too long (the statement timeout) "
                "or was interrupted; retry shortly."
            ) from exc
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise ServiceUnavailable("The database is unreachable; retry shortly.") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction with the service role's view (bypasses RLS): for the worker and admin."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def single_statement(self) -> Iterator[Connection]:
        """A connection in autocommit mode, for one statement that is its own transaction: one
        round trip, where transaction() adds BEGIN and COMMIT."""
        with self.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                # Handed back as the pool lent it. A connection left mid-query (interrupted) or
                # broken is not idle: the pool discards it, and touching it here would raise.
                if conn.info.transaction_status == TransactionStatus.IDLE:
                    conn.autocommit = False

    @contextmanager
    def user_transaction(self, claims: dict[str, Any]) -> Iterator[Connection]:
        """A transaction that runs as Supabase's `authenticated` role, so RLS policies apply."""
        with self.connection() as conn, conn.transaction():
            # One round trip for both, as PostgREST does: set_config('role', ..., true) is
            # `set local role`.
            conn.execute(
                "select set_config('role', 'authenticated', true), "
                "set_config('request.jwt.claims', %s, true)",
                (json.dumps(claims),),
            )
            yield conn

    def ping(self) -> None:
        """Raise ServiceUnavailable unless `select 1` answers."""
        with self.connection() as conn:
            conn.execute("select 1")

    def close(self) -> None:
        """Close the pool of this process, if one was opened."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None
