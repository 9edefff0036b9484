"""The server pings every socket and closes one that stops answering."""

from __future__ import annotations

import time
from typing import Any

import websocket

SETTINGS = {"ws_ping_seconds": 0.5}


def test_the_server_pings_every_socket(connect: Any) -> None:
    sock = connect("workflows")
    deadline = time.monotonic() + 5
    pings = 0
    while pings < 2 and time.monotonic() < deadline:
        frame = sock.ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_PING:
            sock.ws.pong(frame.data)
            pings += 1
    assert pings == 2
    sock.expect_quiet()


def test_a_socket_that_never_answers_a_ping_is_closed_with_1001(connect: Any) -> None:
    sock = connect("workflows")
    started = time.monotonic()
    while True:
        frame = sock.ws.recv_frame()  # reads frames without answering pings
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(frame.data[:2], "big") == 1001
    assert time.monotonic() - started < 3
