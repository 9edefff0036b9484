"""What bench/capacity.py reads from Postgres and Redis: statements per role (Postgres's own
statement log, roles told apart by application_name), WAL bytes and records (pg_waldump), Redis
commands per role and key class (MONITOR), and who holds which connection (ss)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import redis

from conveyor.constants import EVENTS_CHANNEL_PREFIX

LOG_PREFIX = "@@%a|%p@@ "  # application_name and backend pid on every log line
LOG_LINE = re.compile(
    r"^@@(?P<app>[^|]*)\|(?P<pid>\d+)@@ LOG:  (?:statement|execute [^:]+): (?P<sql>.*)"
)
TRANSACTION_CONTROL = ("begin", "commit", "rollback", "savepoint", "release")
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")
BROKER_QUEUES = ("runs", "usage", "webhooks", "maintenance", "celery")
MONITOR_POLL_SECONDS = 0.5
# +<time> [<db> <client address or "lua">] "<command>" "<first argument>" ...
MONITOR_LINE = re.compile(
    r'^\+[\d.]+ \[\d+ (?P<address>[^\]]+)\] "(?P<command>[^"]*)"(?: "(?P<key>(?:[^"\\]|\\.)*)")?'
)


def configure_server(conn: psycopg.Connection[tuple[int]]) -> None:
    """On the bench's own embedded server: log every statement with its application_name,
    parameters left out (pg_stat_statements is not in the pgserver build, so the log counts),
    and no autovacuum, whose WAL depends on table sizes and would land in whichever phase it
    happened to run in."""
    for name, value in (
        ("log_statement", "all"),
        ("log_line_prefix", LOG_PREFIX),
        ("log_parameter_max_length", "0"),
        ("autovacuum", "off"),
    ):
        conn.execute(f"alter system set {name} = '{value}'")
    conn.execute("select pg_reload_conf()")
    time.sleep(0.5)  # the postmaster signals the backends; let them reread the file


@dataclass
class StatementTally:
    """Per role, from the server log: statements (transaction control apart), and transactions
    (each COMMIT, and each statement outside an explicit block: an implicit transaction)."""

    statements: Counter[str] = field(default_factory=Counter)
    control: Counter[str] = field(default_factory=Counter)
    transactions: Counter[str] = field(default_factory=Counter)


def tally_statements(log: Path, start: int, end: int) -> StatementTally:
    """Count the statements logged between two byte offsets of the server log."""
    tally = StatementTally()
    in_block: set[str] = set()  # backend pids inside BEGIN ... COMMIT
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode("utf-8", "replace")
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        app, pid = match["app"], match["pid"]
        first = match["sql"].lstrip().split(" ", 1)[0].lower().rstrip(";")
        if first in TRANSACTION_CONTROL:
            tally.control[app] += 1
            if first == "begin":
                in_block.add(pid)
            elif first in ("commit", "rollback"):
                in_block.discard(pid)
                tally.transactions[app] += first == "commit"
            continue
        tally.statements[app] += 1
        if pid not in in_block:
            tally.transactions[app] += 1
    return tally


@dataclass(frozen=True)
class WalStats:
    """WAL written between two LSNs: bytes, commit records, full-page images."""

    bytes: int
    commits: int
    fpi_bytes: int
    records: int
    kinds: Counter[str] = field(default_factory=Counter)  # records by rmgr/type


def pg_waldump() -> Path:
    """The embedded build's own pg_waldump (it reads that server's WAL format)."""
    import pgserver  # heavy, and only the embedded server has it

    return Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_waldump"


def wal_stats(wal_dir: Path, start: str, end: str, total: int) -> WalStats:
    """pg_waldump --stats between two LSNs; `total` is pg_wal_lsn_diff of the two."""
    if start == end:
        return WalStats(0, 0, 0, 0)
    out = subprocess.run(
        [str(pg_waldump()), "--stats=record", "-p", str(wal_dir), "-s", start, "-e", end],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    commits = records = fpi = 0
    kinds: Counter[str] = Counter()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            continue
        if "/" in parts[0]:
            kinds[parts[0]] = int(parts[1])
        if parts[0] == "Transaction/COMMIT":
            commits = int(parts[1])
        if parts[0] == "Total":
            records, fpi = int(parts[1]), int(parts[4])
    return WalStats(total, commits, fpi, records, kinds)


def key_class(command: str, key: str) -> str:
    """What a Redis command serves: Celery's broker (MULTI/EXEC too: only kombu sends them),
    run-event pub/sub, Celery's events (worker heartbeats), or Conveyor's own keys."""
    if command in ("publish", "psubscribe", "subscribe"):
        return "event pub/sub" if key.startswith(EVENTS_CHANNEL_PREFIX) else "celery events"
    if key in KOMBU_KEYS or key.startswith("_kombu"):
        return "broker"
    # A priority queue is the queue's name, \x06\x16 and the priority (MONITOR escapes them).
    if re.split(r"\\x06|\x06", key, maxsplit=1)[0] in BROKER_QUEUES or command in (
        "brpop",
        "multi",
        "exec",
    ):
        return "broker"
    return "conveyor"


class RedisMonitor:
    """MONITOR in a thread, on a raw socket (a read timeout must not end the stream): every
    command with the address of the client that sent it."""

    def __init__(self, redis_url: str) -> None:
        parsed = urlparse(redis_url)
        self._address = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._stop = threading.Event()
        self.seen: Counter[tuple[str, str, str]] = Counter()  # (address, command, purpose)
        self.channels: Counter[str] = Counter()  # PUBLISH by channel prefix (up to a colon)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._socket: socket.socket | None = None

    def __enter__(self) -> RedisMonitor:
        self._socket = socket.create_connection(self._address, timeout=5)
        self._socket.sendall(b"MONITOR\r\n")
        reply = self._socket.recv(64)  # +OK: every later command is streamed
        if not reply.startswith(b"+OK"):
            raise SystemExit(f"bench: Redis refused MONITOR: {reply!r}")
        self._socket.settimeout(MONITOR_POLL_SECONDS)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    def _run(self) -> None:
        assert self._socket is not None
        pending = b""
        while not self._stop.is_set():
            try:
                chunk = self._socket.recv(1 << 16)
            except TimeoutError:
                continue  # nothing sent for a while: check the stop flag
            if not chunk:
                return  # the server closed the connection
            *lines, pending = (pending + chunk).split(b"\r\n")
            for line in lines:
                self._count(line.decode("utf-8", "replace"))

    def _count(self, line: str) -> None:
        match = MONITOR_LINE.match(line)
        if match is None:
            return
        command, key = match["command"].lower(), match["key"] or ""
        self.seen[(match["address"], command, key_class(command, key))] += 1
        if command == "publish":
            self.channels[key.split(":", 1)[0]] += 1


def tcp_owners() -> dict[str, int]:
    """TCP local address (ip:port) -> pid of the process holding that end."""
    owners: dict[str, int] = {}
    for line in run_ss("-tnpH").splitlines():
        parts = line.split()
        pid = owner_pid(line)
        if len(parts) >= 4 and pid:
            owners[parts[3]] = pid
    return owners


def unix_owners() -> dict[int, int]:
    """Unix socket inode -> pid of a process holding it."""
    owners: dict[int, int] = {}
    for line in run_ss("-xpH").splitlines():
        parts = line.split()
        pid = owner_pid(line)
        if len(parts) >= 6 and pid and parts[5].isdigit():
            owners[int(parts[5])] = pid
    return owners


def unix_peers() -> dict[int, int]:
    """Unix socket inode -> its peer's inode."""
    peers: dict[int, int] = {}
    for line in run_ss("-xH").splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[5].isdigit() and parts[7].isdigit():
            peers[int(parts[5])] = int(parts[7])
    return peers


def run_ss(flags: str) -> str:
    """ss's output (iproute2), bounded in time."""
    return subprocess.run(
        ["ss", flags], capture_output=True, text=True, timeout=20, check=False
    ).stdout


def owner_pid(line: str) -> int:
    """The first pid ss names on a line (0 if none)."""
    match = re.search(r"pid=(\d+)", line)
    return int(match[1]) if match else 0


def postgres_clients(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """(client pid, application_name) of every client backend of this server: the backend's
    socket (a unix socket here) mapped through its peer to the process holding the other end."""
    rows = conn.execute(
        "select pid, coalesce(application_name, '') from pg_stat_activity "
        "where backend_type = 'client backend' and pid <> pg_backend_pid()"
    ).fetchall()
    owners, peers = unix_owners(), unix_peers()
    by_pid: dict[int, list[int]] = {}
    for inode, pid in owners.items():
        by_pid.setdefault(pid, []).append(inode)
    found = []
    for row in rows:
        client = 0
        for inode in by_pid.get(int(row[0]), []):
            client = owners.get(peers.get(inode, -1), 0) or client
        found.append((client, str(row[1])))
    return found


def redis_clients(client: redis.Redis) -> list[tuple[str, int]]:
    """(address, pattern subscriptions) of every Redis client connection but the asking one."""
    return [
        (str(entry["addr"]), int(entry.get("psub", 0)))
        for entry in client.client_list()
        if entry.get("cmd") != "client|list"
    ]
