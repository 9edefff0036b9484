"""`conveyor submit --follow`: submit over HTTP, follow the run over the websocket to its end."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.support import LiveServer, token_for


def conveyor_submit(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "submit", *args, "--url", server.url,
         "--token", token_for(uuid.uuid4())],
        env={k: v for k, v in os.environ.items() if k != "CONVEYOR_TOKEN"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.usefixtures("worker")
def test_submit_follow_prints_progress_until_the_run_completes(live_server: LiveServer) -> None:
    result = conveyor_submit(live_server, "echo", "--input", '{"n": 1}', "--follow")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued" in result.stdout
    assert "100% completed" in result.stdout


def test_submit_without_follow_prints_the_run_and_returns(live_server: LiveServer) -> None:
    result = conveyor_submit(live_server, "echo", "--input", '{"n": 1}')

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run ")


def test_submit_says_what_is_wrong_with_the_request(live_server: LiveServer) -> None:
    unknown = conveyor_submit(live_server, "no_such_workflow")
    bad_json = conveyor_submit(live_server, "echo", "--input", "{not json")

    assert unknown.returncode != 0
    assert "no workflow or agent type named 'no_such_workflow'" in unknown.stderr
    assert bad_json.returncode == 2
    assert "--input is not JSON" in bad_json.stderr
