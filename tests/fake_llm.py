"""A loopback server that answers like an OpenAI-compatible API, scripted by the test.

`POST /v1/chat/completions` replies with a completion and `usage`, or with the next status a test
scripted for that prompt (429, 500, 400...). With `"stream": true` it sends server-sent events
instead: the chunks a test scripted for the prompt (`stream_script`, default: the reply word by
word), a usage chunk when the request asks for one, then `data: [DONE]`; the script may cut the
first request's connection, or hold it, after some chunks. `GET /hold/<key>` holds its first
request until the client goes away (a killed worker), then answers later ones at once. Every
answer that reached a connected client is counted, per prompt or key. Each completion's arrival
(time.monotonic) and the tokens its usage reports are kept in `arrivals`; a test may set
`completion_tokens` (the reply then spends that many, at most the request's max_tokens) and
`retry_after` / `ratelimit_headers` for its scripted 429s.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_LIMIT_SECONDS = 30


@dataclass(frozen=True)
class StreamScript:
    """How the fake streams its reply to a prompt. cut_after and hold_after apply to the first
    request only: close the connection (no [DONE]) or hold it until the client goes away."""

    chunks: tuple[str, ...]
    delay: float = 0.0  # seconds before each chunk
    usage: bool = True  # send the final usage chunk when the request asks for it
    cut_after: int | None = None
    hold_after: int | None = None
    ignore_stream: bool = False  # answer with one JSON completion, as some servers do

    @property
    def text(self) -> str:
        """The whole reply, as a complete stream carries it."""
        return "".join(self.chunks)


@dataclass(frozen=True)
class Arrival:
    """One request as the fake saw it: when (time.monotonic), its prompt and its real tokens."""

    at: float
    prompt: str
    tokens: int


class FakeLlm:
    """The server and what it saw."""

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.abandoned: Counter[str] = Counter()
        self.holding = threading.Event()
        self._scripts: dict[str, deque[int]] = defaultdict(deque)
        self._held: set[str] = set()
        self._streams: dict[str, StreamScript] = {}
        self.stream_requests: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # streams the client closed before their end
        self.streams_ended: Counter[str] = Counter()  # streamed answers over, however they ended
        self.arrivals: list[Arrival] = []  # non-streamed completions answered 200
        self.rejections: list[Arrival] = []  # scripted 429s, when they arrived
        self.completion_tokens: int | None = None
        self.retry_after = "0"
        self.ratelimit_headers: dict[str, str] = {}
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

    def stream_script(self, prompt: str, script: StreamScript) -> None:
        """Stream the reply to this prompt as script says."""
        with self._lock:
            self._streams[prompt] = script

    def _stream_for(self, prompt: str) -> tuple[StreamScript, bool]:
        """The prompt's script (default: the reply word by word) and whether this is the first
        streamed request for it."""
        with self._lock:
            self.stream_requests[prompt] += 1
            words = f"reply to: {prompt}".split(" ")
            default = StreamScript(chunks=(*(f"{word} " for word in words[:-1]), words[-1]))
            script = self._streams.get(prompt, default)
            return script, self.stream_requests[prompt] == 1

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
                arrived = time.monotonic()
                fake.received[prompt] += 1
                status = fake._next_status(prompt)
                if status != 200:
                    error = {"error": {"message": f"scripted {status}", "type": "test"}}
                    extra = {"Retry-After": fake.retry_after, **fake.ratelimit_headers}
                    if status == 429:
                        fake.rejections.append(Arrival(arrived, prompt, 0))
                    self._send(status, error, extra if status == 429 else {})
                    return
                words = len(prompt.split())
                if body.get("stream"):
                    self._stream(prompt, body, words)
                    return
                completion = words + 3
                if fake.completion_tokens is not None:
                    completion = min(fake.completion_tokens, body.get("max_tokens") or 10**9)
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
                        "completion_tokens": completion,
                        "total_tokens": words + completion,
                    },
                }
                with fake._lock:
                    fake.arrivals.append(Arrival(arrived, prompt, words + completion))
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

            def _stream(self, prompt: str, body: dict[str, Any], words: int) -> None:
                try:
                    self._send_stream(prompt, body, words)
                except (BrokenPipeError, ConnectionResetError):
                    fake.dropped[prompt] += 1  # the client stopped reading mid-stream
                finally:
                    fake.streams_ended[prompt] += 1

            def _send_stream(self, prompt: str, body: dict[str, Any], words: int) -> None:
                script, first = fake._stream_for(prompt)
                if script.ignore_stream:
                    reply = {
                        "id": f"chatcmpl-{fake.received.total()}",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": script.text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": words, "completion_tokens": len(script.chunks)},
                    }
                    self._send(200, reply)
                    fake.completed[prompt] += 1
                    return
                ident = f"chatcmpl-{fake.received.total()}"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("x-request-id", f"req-{fake.received.total()}")
                self.end_headers()  # HTTP/1.0 without a length: the body ends when we close
                for number, text in enumerate(script.chunks):
                    if first and script.cut_after == number:
                        fake.cut[prompt] += 1
                        return
                    if first and script.hold_after == number:
                        fake.holding.set()
                        if self._client_left_within(HOLD_LIMIT_SECONDS):
                            fake.abandoned[prompt] += 1
                            return
                    time.sleep(script.delay)
                    self._event(ident, body, [{"index": 0, "delta": {"content": text}}])
                self._event(ident, body, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
                wants_usage = (body.get("stream_options") or {}).get("include_usage")
                if script.usage and wants_usage:
                    usage = {
                        "prompt_tokens": words,
                        "completion_tokens": len(script.chunks),
                        "total_tokens": words + len(script.chunks),
                    }
                    self._event(ident, body, [], usage=usage)
                self.wfile.write(b"data: [DONE]\n\n")
                fake.completed[prompt] += 1

            def _event(
                self, ident: str, body: dict[str, Any], choices: list[Any], **extra: Any
            ) -> None:
                chunk = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "model": body["model"],
                    "choices": choices,
                    **extra,
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

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
