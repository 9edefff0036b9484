"""The clients of bench/load.py: submitter and poller threads for one phase, and websockets that
follow users' runs from their own process. Every loop is bounded by the phase's duration."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

HTTP_TIMEOUT = 10
POLL_WINDOW = 50  # pollers pick among this many latest submissions
CONNECTING_AT_ONCE = 25


@dataclass(frozen=True)
class Target:
    """How to submit to and poll one stack."""

    name: str
    base_url: str
    submit_path: str
    body: dict[str, Any]
    id_field: str
    status_path: str
    tokens: tuple[str, ...] = ()

    @classmethod
    def bare(cls, base_url: str) -> Target:
        """The bare Flask + Celery app (bench/bare_app.py)."""
        return cls("bare", base_url, "/enqueue", {"message": "load"}, "task_id", "/status/{id}")

    @classmethod
    def conveyor(cls, base_url: str, tokens: list[str]) -> Target:
        """Conveyor's one-step agent submit, as several users."""
        return cls(
            "conveyor",
            base_url,
            "/api/agents/invoke",
            {"agent_type": "echo", "input": {"message": "load"}},
            "request_id",
            "/api/runs/{id}",
            tuple(tokens),
        )

    def headers(self, token: str | None) -> dict[str, str]:
        """The Authorization header for token, if the stack wants one."""
        return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class Phase:
    """How long and with how many client threads."""

    seconds: float
    submitters: int
    pollers: int


@dataclass
class PhaseResult:
    """What one phase measured."""

    seconds: float
    submit_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ids: list[str] = field(default_factory=list)
    finished: int = 0
    sockets: dict[str, float] | None = None
    # CPU seconds each part of the stack used from the phase's start until its runs finished.
    cpu: dict[str, float] = field(default_factory=dict)

    def submit_rate(self) -> float:
        """Accepted submissions per second."""
        return len(self.ids) / self.seconds

    def poll_rate(self) -> float:
        """Answered polls per second."""
        return len(self.poll_ms) / self.seconds

    def submit_percentile(self, p: int) -> float:
        """Submit latency percentile p, in ms."""
        return percentile(self.submit_ms, p)

    def poll_percentile(self, p: int) -> float:
        """Poll latency percentile p, in ms."""
        return percentile(self.poll_ms, p)

    def cpu_per_submit_ms(self, part: str) -> float:
        """CPU ms a part used per accepted submission (its run and polls included)."""
        return 1000 * self.cpu.get(part, 0.0) / len(self.ids) if self.ids else 0.0

    def error_count(self) -> int:
        """Failed requests of any kind."""
        return sum(self.errors.values())

    def summary(self) -> str:
        """One line for the phase."""
        line = (
            f"submits/s {self.submit_rate():7,.0f} (p50 {self.submit_percentile(50):5.1f} "
            f"p99 {self.submit_percentile(99):6.1f} ms)  polls/s {self.poll_rate():7,.0f} "
            f"(p99 {self.poll_percentile(99):6.1f} ms)  errors {dict(self.errors) or 0}  "
            f"finished {self.finished}/{len(self.ids)}"
        )
        if self.sockets:
            line += (
                f"  ws received {self.sockets['received']:,.0f} "
                f"(p99 {self.sockets['p99_ms']:.1f} ms)"
            )
        return line


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile (0 for no values)."""
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def run_phase(target: Target, phase: Phase) -> PhaseResult:
    """Submit and poll for phase.seconds with the phase's threads; list appends are atomic."""
    result = PhaseResult(phase.seconds)
    owners: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + phase.seconds
    tokens = itertools.cycle(target.tokens or (None,))

    def timed(
        session: requests.Session, method: str, path: str, token: str | None, label: str
    ) -> tuple[requests.Response, float] | None:
        """One request and its latency in ms; None (counted as an error) if it failed."""
        started = time.perf_counter()
        try:
            answer = session.request(
                method,
                target.base_url + path,
                json=target.body if method == "POST" else None,
                headers=target.headers(token),
                timeout=HTTP_TIMEOUT,
            )
        except requests.RequestException as exc:
            result.errors[f"{label} {type(exc).__name__}"] += 1
            return None
        if answer.status_code >= 400:
            result.errors[f"{label} {answer.status_code}"] += 1
            return None
        return answer, (time.perf_counter() - started) * 1000

    def submitter() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                with lock:
                    token = next(tokens)
                answered = timed(session, "POST", target.submit_path, token, "submit")
                if answered is not None:
                    answer, ms = answered
                    result.submit_ms.append(ms)
                    run_id = answer.json()[target.id_field]
                    result.ids.append(run_id)
                    owners.append((run_id, token))

    def poller() -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if not owners:
                    time.sleep(0.01)
                    continue
                run_id, token = owners[-1 - random.randrange(min(len(owners), POLL_WINDOW))]
                path = target.status_path.format(id=run_id)
                answered = timed(session, "GET", path, token, "poll")
                if answered is not None:
                    result.poll_ms.append(answered[1])

    threads = [threading.Thread(target=submitter) for _ in range(phase.submitters)]
    threads += [threading.Thread(target=poller) for _ in range(phase.pollers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=phase.seconds + HTTP_TIMEOUT + 5)
    return result


def follow_sockets(ws_url: str, tokens: list[str], seconds: float, ready: Any, out: Any) -> None:
    """In its own process: one socket per token following `user:<id>`; put the tally in out."""
    tally = asyncio.run(follow(ws_url, tokens, seconds, ready))
    tally["cpu_seconds"] = time.process_time()  # this process's own CPU, for the CPU table
    out.put(tally)


async def follow(ws_url: str, tokens: list[str], seconds: float, ready: Any) -> dict[str, float]:
    """Connect every socket, signal ready, then count events until seconds have passed."""
    import jwt
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    closed = 0
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    sockets = []
    for token in tokens:
        async with gate:
            user = jwt.decode(token, options={"verify_signature": False})["sub"]
            ws = await connect(f"{ws_url}?token={token}", ping_interval=None, open_timeout=60)
            await ws.send(json.dumps({"type": "subscribe", "topic": f"user:{user}"}))
            await ws.recv()  # subscribed (the snapshot of no runs follows as events, if any)
            sockets.append(ws)
    ready.set()
    stop_at = time.monotonic() + seconds

    async def listen(ws: Any) -> None:
        nonlocal closed
        try:
            while (left := stop_at - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=left)
                except TimeoutError:
                    return
                message = json.loads(raw)
                if message.get("type") == "event" and "ts" in message:
                    sent = datetime.fromisoformat(message["ts"]).timestamp()
                    latencies.append((time.time() - sent) * 1000)
        except Exception:  # closed by the server: counted, not fatal to the bench
            closed += 1
        finally:
            await ws.close()

    await asyncio.gather(*(listen(ws) for ws in sockets))
    return {
        "received": float(len(latencies)),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "closed": float(closed),
    }
