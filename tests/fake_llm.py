"""A loopback server that answers like an OpenAI-compatible API, scripted by the test.

`POST /v1/chat/completions` replies with a completion and `usage`, or with the next status a test
scripted for that prompt (429, 500, 400...). `GET /hold/<key>` holds its first request until the
client goes away (a killed worker), then answers later ones at once. Every answer that reached a
connected client is counted, per prompt or key.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_LIMIT_SECONDS = 30


class FakeLlm:
    """The server and what it saw."""

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.abandoned: Counter[str] = Counter()
        self.holding = threading.Event()
        self._scripts: dict[str, deque[int]] = defaultdict(deque)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self.base_url = f"{self.url}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeLlm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, prompt: str, *statuses: int) -> None:
        """Answer the next requests with this prompt with these statuses, then normally."""
        with self._lock:
            self._scripts[prompt].extend(statuses)

    def _next_status(self, prompt: str) -> int:
        with self._lock:
            queue = self._scripts[prompt]
            return queue.popleft() if queue else 200

    def _first_hold(self, key: str) -> bool:
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                fake.received[prompt] += 1
                status = fake._next_status(prompt)
                if status != 200:
                    error = {"error": {"message": f"scripted {status}", "type": "test"}}
                    self._send(status, error, {"Retry-After": "0"} if status == 429 else {})
                    return
                words = len(prompt.split())
                reply = {
                    "id": f"chatcmpl-{fake.received.total()}",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"reply to: {prompt}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": words,
                        "completion_tokens": words + 3,
                        "total_tokens": 2 * words + 3,
                    },
                }
                self._send(200, reply, {"x-request-id": f"req-{fake.received.total()}"})
                fake.completed[prompt] += 1

            def do_GET(self) -> None:
                key = self.path.rsplit("/", 1)[-1]
                fake.received[key] += 1
                if self.path.startswith("/hold/") and fake._first_hold(key):
                    fake.holding.set()
                    if self._client_left_within(HOLD_LIMIT_SECONDS):
                        fake.abandoned[key] += 1
                        return
                self._send(200, {"key": key})
                fake.completed[key] += 1

            def _client_left_within(self, seconds: float) -> bool:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0.05)
                    if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                return False

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
