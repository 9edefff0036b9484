"""CPU time by part of a running stack (web, worker, Postgres, Redis, client), read from the
processes with psutil: on a machine whose cores every part shares, throughput follows the CPU a
request costs in all of them, and this says where it went."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

SERVER_NAMES = {"postgres": ("postgres",), "redis": ("redis-server", "redis")}


def tree_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by pid and its live descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    return sum(own_seconds(process) for process in processes)


def own_seconds(process: psutil.Process) -> float:
    """CPU seconds used so far by one process (0 once it is gone)."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def named_seconds(names: Iterable[str]) -> float:
    """CPU seconds used so far by every process with one of these names (a server's backends)."""
    wanted = tuple(names)
    return sum(
        own_seconds(process)
        for process in psutil.process_iter(["name"])
        if (process.info["name"] or "").startswith(wanted)
    )


@dataclass
class CpuMeter:
    """Reads each part's CPU seconds; `since` gives what each used after an earlier reading."""

    parts: dict[str, Callable[[], float]] = field(default_factory=dict)

    @classmethod
    def for_stack(cls, web_pid: int, worker_pid: int) -> CpuMeter:
        """A stack's web and worker process trees, the servers by name, and this process."""
        this = psutil.Process(os.getpid())
        return cls(
            {
                "web": lambda: tree_seconds(web_pid),
                "worker": lambda: tree_seconds(worker_pid),
                "postgres": lambda: named_seconds(SERVER_NAMES["postgres"]),
                "redis": lambda: named_seconds(SERVER_NAMES["redis"]),
                "client": lambda: own_seconds(this),
            }
        )

    def read(self) -> dict[str, float]:
        """Each part's CPU seconds so far."""
        return {name: read() for name, read in self.parts.items()}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Each part's CPU seconds since `before` (a reading of this meter)."""
        now = self.read()
        return {name: max(0.0, now[name] - before.get(name, 0.0)) for name in now}
