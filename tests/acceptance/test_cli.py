"""The `conveyor` command: migrate, doctor, token, and `run` bringing the whole system up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from conveyor.auth.tokens import TokenVerifier
from conveyor.cli.services import free_port
from tests.support import API_SECRET, JWT_SECRET, ApiClient, wait_for_run

STARTUP_SECONDS = 90


def conveyor(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed cleanly: exit 2, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    [line] = result.stderr.strip().splitlines()
    return line


def base_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The caller's environment without Conveyor's variables, plus values."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "SUPABASE_JWT_SECRET",
            "SUPABASE_URL",
            "SUPABASE_SERVICE_ROLE_KEY",
            "API_JWT_SECRET",
            "CONVEYOR_ENV",
        }
    }
    env.update(CONVEYOR_DATA_DIR=str(tmp_path / "data"), **values)
    return env


def test_migrate_reports_nothing_to_do_on_a_migrated_database(
    database_url: str, tmp_path: Path
) -> None:
    result = conveyor("migrate", env=base_env(tmp_path, DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    assert "applied 0 migration(s)" in result.stdout


def test_doctor_reports_reachable_services(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    result = conveyor(
        "doctor", env=base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok ] postgres: reachable" in result.stdout
    assert "[ok ] migrations: up to date" in result.stdout
    assert "[ok ] redis: reachable" in result.stdout


def test_doctor_fails_naming_an_unreachable_redis(database_url: str, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = conveyor("doctor", env=base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=dead))
    assert result.returncode == 1
    assert "[FAIL] redis: unreachable" in result.stdout


def test_doctor_reports_no_anon_privilege_on_a_migrated_database(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    result = conveyor(
        "doctor", env=base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    anon_lines = [line for line in result.stdout.splitlines() if "anon access" in line]
    assert anon_lines == [
        "[ok ] anon access: anon holds no privilege on schema conveyor or its objects"
    ]


def test_doctor_fails_naming_a_privilege_granted_to_anon(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("grant select on conveyor.workflow_runs to anon")

    result = conveyor(
        "doctor", env=base_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=redis_url)
    )

    assert result.returncode == 1, result.stdout + result.stderr
    anon_lines = [line for line in result.stdout.splitlines() if "anon access" in line]
    assert anon_lines == [
        "[FAIL] anon access: anon holds SELECT on table conveyor.workflow_runs: revoke it"
    ]


def test_token_mints_a_token_for_the_given_user(tmp_path: Path) -> None:
    user = uuid.uuid4()
    result = conveyor(
        "token", "--user", str(user), env=base_env(tmp_path, SUPABASE_JWT_SECRET=JWT_SECRET)
    )
    assert result.returncode == 0, result.stderr
    verifier = TokenVerifier(supabase_secret=JWT_SECRET, api_secret=API_SECRET, jwks=None)
    assert verifier.verify(result.stdout.strip()).user_id == user


def test_token_service_mints_a_scoped_service_token(tmp_path: Path) -> None:
    result = conveyor(
        "token", "--service", "billing", "--scope", "usage:write",
        env=base_env(tmp_path, API_JWT_SECRET=API_SECRET),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    verifier = TokenVerifier(supabase_secret=JWT_SECRET, api_secret=API_SECRET, jwks=None)
    principal = verifier.verify(result.stdout.strip())
    assert principal.is_service
    assert principal.scopes == frozenset({"usage:write"})


def wait_until_healthy(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"conveyor run exited during startup:\n{output[-4000:]}")
        try:
            if requests.get(f"{base_url}/api/health", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or its workers are still starting
        time.sleep(0.25)
    raise AssertionError(f"conveyor run not healthy after {STARTUP_SECONDS} s")


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention path (embedded servers keep data there)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.timeout(180)
def test_run_brings_up_embedded_services_web_worker_and_beat_and_stops_them(tmp_path: Path) -> None:
    """The README's promise: with nothing configured, `conveyor run` serves runs end to end."""
    port = free_port()
    env = base_env(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "run",
            "--port",
            str(port),
            "--web-workers",
            "1",
            "--concurrency",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, process)
        token = conveyor("token", env=env).stdout.strip()
        client = ApiClient(base_url, token)
        accepted = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"m": 1}})
        assert accepted.status_code == 202, accepted.text
        run = wait_for_run(client, accepted.json()["request_id"], timeout=30)
        assert run["status"] == "completed", (run["error"], run["error_code"])
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
    assert "Conveyor API: http://" in output
    assert processes_using(tmp_path / "data") == [], output[-3000:]
