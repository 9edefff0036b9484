"""Submit → first streamed token: how long after `POST /api/agents/workflows/execute` a client on
/api/ws/workflows receives the run's first `step_tokens` event, beside the provider's own first
token time measured directly against the same server.

The provider is a loopback OpenAI-compatible streaming server in this process that sends each
token after a fixed delay (--token-delay), so its first token takes that delay plus HTTP. The web
app runs under `conveyor run`'s gunicorn command and one solo worker consumes `runs`, on embedded
(or configured) Postgres and Redis. Runs are submitted one at a time (latency, not throughput).
Usage: python -m bench.stream_first_token [--runs 30] [--tokens 20] [--token-delay 0.02]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import websocket

from bench.harness import BENCH_SECRET, bench_environment, process_env
from bench.stream_workflow import NAME
from bench.ws import wait_for_health
from conveyor.auth.tokens import mint_token
from conveyor.cli.main import gunicorn_command
from conveyor.cli.services import free_port
from conveyor.ledger.balances import add_credits

MAX_RUNS = 500
RUN_TIMEOUT_SECONDS = 30
REPO_MODULES = "bench.stream_workflow"


class StreamingProvider:
    """/v1/chat/completions answering every request with `tokens` chunks, one per delay."""

    def __init__(self, tokens: int, delay: float) -> None:
        self.tokens, self.delay = tokens, delay
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for index in range(provider.tokens):
                    time.sleep(provider.delay)
                    self.chunk(body, [{"index": 0, "delta": {"content": f"t{index} "}}])
                self.chunk(body, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
                usage = {"prompt_tokens": 1, "completion_tokens": provider.tokens}
                self.chunk(body, [], usage=usage)
                self.wfile.write(b"data: [DONE]\n\n")

            def chunk(self, body: dict[str, Any], choices: list[Any], **extra: Any) -> None:
                data = {"id": "bench", "model": body["model"], "choices": choices, **extra}
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def provider_first_token(client: httpx.Client, base_url: str) -> float:
    """Seconds from sending a streamed request to its first content chunk, straight to the
    provider (the client is made beforehand: its set-up is not the provider's time)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    started = time.perf_counter()
    with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                return time.perf_counter() - started
    raise SystemExit("bench: the provider sent no token")


def conveyor_first_token(base_url: str, token: str) -> tuple[float, float]:
    """Seconds from submitting a run to the submit's answer and to the run's first `step_tokens`
    event on the websocket."""
    ws_url = base_url.replace("http://", "ws://") + f"/api/ws/workflows?token={token}"
    sock = websocket.create_connection(ws_url, timeout=RUN_TIMEOUT_SECONDS)
    try:
        started = time.perf_counter()
        response = httpx.post(
            f"{base_url}/api/agents/workflows/execute",
            json={"workflow_id": NAME, "inputs": {"prompt": "x"}, "async": True},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if response.status_code != 202:
            raise SystemExit(f"bench: submit answered {response.status_code}: {response.text}")
        answered = time.perf_counter() - started
        run_id = response.json()["workflow_run_id"]
        # since=0: a token emitted before this subscribe is replayed, so none is missed.
        topic = f"workflow_run:{run_id}"
        sock.send(json.dumps({"type": "subscribe", "topic": topic, "since": 0}))
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            message = json.loads(sock.recv())
            if message.get("event") == "step_tokens":
                first = time.perf_counter() - started
                wait_for_end(sock, deadline)  # one run at a time: the next starts on an idle worker
                return answered, first
        raise SystemExit(f"bench: run {run_id} sent no token within {RUN_TIMEOUT_SECONDS} s")
    finally:
        sock.close()


def wait_for_end(sock: websocket.WebSocket, deadline: float) -> None:
    """Read the run's events until its final status (or the deadline)."""
    while time.monotonic() < deadline:
        message = json.loads(sock.recv())
        data = message.get("data") or {}
        if message.get("event") == "workflow_status_update" and data.get("status") in (
            "completed",
            "failed",
            "cancelled",
        ):
            return


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def report(name: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"{name:<42} p50 {statistics.median(ms):7.1f} ms   p99 {percentile(ms, 0.99):7.1f} ms"
        f"   (n={len(ms)}, min {min(ms):.1f}, max {max(ms):.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per token")
    args = parser.parse_args()
    runs = max(1, min(args.runs, MAX_RUNS))
    provider = StreamingProvider(max(1, min(args.tokens, 1000)), max(0.0, min(args.token_delay, 1)))
    env = {"LLM_BASE_URL": provider.base_url, "CONVEYOR_WORKFLOW_MODULES": REPO_MODULES}
    try:
        with httpx.Client(timeout=30) as client:
            direct = [provider_first_token(client, provider.base_url) for _ in range(runs)]
        with bench_environment(**env) as bench:
            # Each run costs credits; the bench measures latency, not admission refusals.
            add_credits(bench.db, bench.user, 1_000_000, kind="grant", reference="bench-stream")
            port = free_port()
            command = gunicorn_command(sys.executable, host="127.0.0.1", port=port, workers=2,
                                       threads=16)  # fmt: skip
            data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-stream-"))
            web_env = process_env(bench.db.url, bench.redis_url, BENCH_SECRET, data_dir, **env)
            server = subprocess.Popen(
                shlex.split(command),
                env=web_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                base_url = f"http://127.0.0.1:{port}"
                wait_for_health(base_url, server)
                token = mint_token(bench.user, secret=BENCH_SECRET)
                conveyor_first_token(base_url, token)  # warm-up: connections, imports
                timings = [conveyor_first_token(base_url, token) for _ in range(runs)]
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        provider.close()
    print(
        f"{runs} runs, one at a time; provider: {provider.tokens} tokens, "
        f"{provider.delay * 1000:g} ms per token; LLM_STREAM_FLUSH_SECONDS default"
    )
    report("provider first token (direct)", direct)
    submitted = [first for _, first in timings]
    report("submit answered (202)", [answered for answered, _ in timings])
    report("submit → first step_tokens on the websocket", submitted)
    overhead = statistics.median(submitted) - statistics.median(direct)
    print(f"Conveyor's added p50: {overhead * 1000:.1f} ms (submit, queue, claim, event, socket)")


if __name__ == "__main__":
    main()
