"""CPU time by part of a running stack (web, worker, Postgres, Redis, client): on a machine whose
cores every part shares, throughput follows the CPU a request costs in all of them, and this says
where it went. Process trees are read with psutil; Redis reports its own."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import redis

from conveyor.db import sql_connection

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def tree_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by pid's process tree, including what its
    processes collected from children that exited: a reaped worker or backend is not lost."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    return sum(process_seconds(process, reaped=True) for process in processes)


def process_seconds(process: psutil.Process, *, reaped: bool = False) -> float:
    """CPU seconds used so far by one process (0 once it is gone); with its reaped children's."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    total = times.user + times.system
    if reaped:
        total += times.children_user + times.children_system
    return float(total)


def postmaster_pid(database_url: str) -> int | None:
    """The pid of the Postgres server behind database_url when it runs on this machine."""
    with sql_connection(database_url) as conn:
        host = conn.info.host
        if not (host in LOCAL_HOSTS or host.startswith("/")):
            return None
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        # Read while the backend is alive: its parent is the postmaster.
        parent = psutil.Process(int(row[0])).parent()
    return parent.pid if parent is not None else None


def redis_seconds(client: redis.Redis) -> float:
    """CPU seconds the Redis server says it used (its threads and any forked children)."""
    info = client.info("cpu")
    return float(
        sum(
            info.get(key, 0.0)
            for key in (
                "used_cpu_sys",
                "used_cpu_user",
                "used_cpu_sys_children",
                "used_cpu_user_children",
            )
        )
    )


@dataclass
class CpuMeter:
    """Reads each part's CPU seconds; `since` gives what each used after an earlier reading."""

    parts: dict[str, Callable[[], float]] = field(default_factory=dict)

    @classmethod
    def for_stack(
        cls, web_pid: int, worker_pid: int, database_url: str, redis_client: redis.Redis
    ) -> CpuMeter:
        """A stack's web and worker process trees, the Postgres server's tree (when local),
        Redis's own count, and this process (not its children: the stack's processes)."""
        this = psutil.Process(os.getpid())
        parts: dict[str, Callable[[], float]] = {
            "web": lambda: tree_seconds(web_pid),
            "worker": lambda: tree_seconds(worker_pid),
            "redis": lambda: redis_seconds(redis_client),
            "client": lambda: process_seconds(this),
        }
        postmaster = postmaster_pid(database_url)
        if postmaster is not None:
            parts["postgres"] = lambda: tree_seconds(postmaster)
        return cls(parts)

    def read(self) -> dict[str, float]:
        """Each part's CPU seconds so far."""
        return {name: read() for name, read in self.parts.items()}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Each part's CPU seconds since `before` (a reading of this meter)."""
        now = self.read()
        return {name: now[name] - before[name] for name in now}
