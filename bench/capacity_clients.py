"""The clients of bench/capacity.py: HTTP submitters (`POST /api/agents/workflows/execute`,
async, as an API caller submits) and websockets following one user's runs from their own
process. Every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import requests

HTTP_TIMEOUT = 10
SUBMIT_SECONDS = 300  # no batch of submits may take longer
CONNECTING_AT_ONCE = 25


def submit_http(base_url: str, token: str, workflow: str, count: int, threads: int) -> list[str]:
    """Submit `count` runs of `workflow` from `threads` threads; the run ids (SystemExit on a
    refused submit: every run must be counted)."""
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SUBMIT_SECONDS
    claimed = 0

    def submitter() -> None:
        nonlocal claimed
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            while time.monotonic() < deadline and not errors:
                with lock:
                    if claimed >= count:
                        return
                    claimed += 1
                answer = session.post(
                    f"{base_url}/api/agents/workflows/execute",
                    json={"workflow_id": workflow, "inputs": {}, "async": True},
                    timeout=HTTP_TIMEOUT,
                )
                with lock:
                    if answer.status_code != 202:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")
                    else:
                        ids.append(answer.json()["workflow_run_id"])

    workers = [threading.Thread(target=submitter) for _ in range(max(1, threads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=SUBMIT_SECONDS + HTTP_TIMEOUT)
    if errors or len(ids) != count:
        raise SystemExit(f"bench: {len(ids)}/{count} submits accepted; first error: {errors[:1]}")
    return ids


def follow_user(
    ws_url: str, token: str, user: str, sockets: int, limit_seconds: float, ready: Any,
    stop: Any, out: Any,
) -> None:  # fmt: skip
    """In its own process: `sockets` websockets on `user:<user>`; put the events they received
    in out once stop is set (or limit_seconds passed)."""
    out.put(asyncio.run(follow(ws_url, token, user, sockets, limit_seconds, ready, stop)))


async def follow(
    ws_url: str, token: str, user: str, sockets: int, limit_seconds: float, ready: Any,
    stop: Any,
) -> dict[str, int]:  # fmt: skip
    """Connect and subscribe every socket, signal ready, count events until stopped."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    opened = []
    for _ in range(sockets):
        async with gate:
            ws = await connect(f"{ws_url}?token={token}", ping_interval=None, open_timeout=60)
            await ws.send(json.dumps({"type": "subscribe", "topic": f"user:{user}"}))
            await ws.recv()  # subscribed
            opened.append(ws)
    ready.set()
    received = closed = 0
    stop_at = time.monotonic() + limit_seconds

    async def listen(ws: Any) -> None:
        nonlocal received, closed
        try:
            while time.monotonic() < stop_at and not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.25)
                except TimeoutError:
                    continue  # check the stop flag
                if json.loads(raw).get("type") == "event":
                    received += 1
        except Exception:  # closed by the server: counted, not fatal to the bench
            closed += 1
        finally:
            await ws.close()

    await asyncio.gather(*(listen(ws) for ws in opened))
    return {"received": received, "closed": closed}
