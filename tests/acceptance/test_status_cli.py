"""`conveyor status`: a terminal summary of queues, workers, runs and maintenance, read from the
same Postgres and Redis the system uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.cli.services import free_port
from conveyor.db import Database
from conveyor.ops import job_runs
from conveyor.settings import Settings
from tests.support import ApiClient, wait_for_run


def conveyor_status(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `conveyor status` in a subprocess, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    """The caller's environment without Conveyor's variables, plus values."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SUPABASE_JWT_SECRET", "API_JWT_SECRET"}
    }
    env.update(CONVEYOR_DATA_DIR=str(tmp_path / "cli-data"), **values)
    return env


def service_urls(settings: Settings) -> dict[str, str]:
    """DATABASE_URL and REDIS_URL of the test's services."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}


@pytest.fixture
def busy_system(settings: Settings, db: Database, client: ApiClient, worker: Any) -> None:
    """One completed run (by a live worker) and one recorded maintenance period."""
    done = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": 1}})
    wait_for_run(client, done.json()["request_id"])
    outcome = job_runs.run_once(db, "usage_rollup", "2026-11-22T10", lambda: {"rows": 7})
    assert outcome.ran


def test_status_summarises_queues_workers_runs_and_maintenance(
    busy_system: None, settings: Settings, worker: Any, tmp_path: Path
) -> None:
    """With services reachable: queue depths, the live worker, run counts and the last
    maintenance run, exit 0."""
    env = environment(tmp_path, **service_urls(settings))

    result = conveyor_status(env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Queues on redis (messages waiting)" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith("runs ")] == [
        ["runs", "0"]
    ]
    assert "Workers (1 with a live heartbeat)" in out
    assert worker.hostname in out
    assert "completed 1" in out
    assert "unfinished now: queued 0, running 0, waiting 0" in out
    assert "usage_rollup" in out
    assert "2026-11-22T10" in out
    assert "succeeded" in out


def test_status_as_json_is_machine_readable(
    busy_system: None, settings: Settings, worker: Any, tmp_path: Path
) -> None:
    """`--json` prints the same report as one JSON document."""
    env = environment(tmp_path, **service_urls(settings))

    result = conveyor_status("--json", "--hours", "2", env=env)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"]["hours"] == 2
    assert report["runs"]["created"]["completed"] == 1
    assert [w["hostname"] for w in report["queues"]["workers"]] == [worker.hostname]
    assert [(m["job"], m["status"]) for m in report["maintenance"]] == [
        ("usage_rollup", "succeeded")
    ]


def test_status_fails_naming_an_unreachable_redis_but_still_shows_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """Redis down: the queues part says so, the Postgres part is still shown, exit 1."""
    assert settings.database_url
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = environment(tmp_path, DATABASE_URL=settings.database_url, REDIS_URL=dead)

    result = conveyor_status(env=env)

    assert result.returncode == 1
    assert "Queues: unknown: Redis is unreachable" in result.stdout
    assert "Runs created in the last 24 h" in result.stdout


def test_status_refuses_bad_options(tmp_path: Path) -> None:
    """--hours outside 1..2160 is a usage error naming the option."""
    result = conveyor_status("--hours", "0", env=environment(tmp_path))
    assert result.returncode == 2
    assert "--hours" in result.stderr
