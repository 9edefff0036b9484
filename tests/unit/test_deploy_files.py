"""The Docker image and docker-compose.yml: a one-host deploy that keeps its state between
containers, stops without losing work, and checks each process's health."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CONVEYOR_SERVICES = ("web", "worker", "beat")
# `${NAME:-default}`: the value compose uses when NAME is unset.
DEFAULTED = re.compile(r"^\$\{\w+:-(?P<default>[^}]*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def environment(service: dict[str, Any], name: str) -> str | None:
    """A service's variable as compose sets it when the deployer's shell leaves it unset."""
    value = service.get("environment", {}).get(name)
    if value is None:
        return None
    found = DEFAULTED.match(str(value))
    return found["default"] if found else str(value)


def seconds(duration: str) -> float:
    """A compose duration (`30s`, `1m30s`) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert duration, "an empty duration"
    assert parts is not None, f"not a duration: {duration!r}"
    return int(parts[1] or 0) * 60 + float(parts[2] or 0)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not docker_compose_works(),
    reason="`docker compose` is not installed here (no compose plugin); checked structurally below",
)
@pytest.mark.parametrize("profile", [[], ["--profile", "rabbitmq"]], ids=["default", "rabbitmq"])
def test_compose_file_passes_docker_compose_config(profile: list[str], tmp_path: Path) -> None:
    env = {"PATH": str(Path(shutil.which("docker") or "docker").parent), "API_JWT_SECRET": "x"}
    checked = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_web_worker_and_beat_mount_one_artifacts_volume_where_large_outputs_go(
    compose: dict[str, Any],
) -> None:
    assert "artifacts" in compose["volumes"]
    for name in CONVEYOR_SERVICES:
        service = compose["services"][name]
        data_dir = environment(service, "CONVEYOR_DATA_DIR")
        assert data_dir is not None, name
        # conveyor.runs.artifacts.store_for: LocalArtifactStore(data_dir / "artifacts")
        assert f"artifacts:{data_dir}/artifacts" in service["volumes"], name


def test_each_container_writes_metrics_to_its_own_fresh_folder(compose: dict[str, Any]) -> None:
    for name in ("web", "worker"):
        service = compose["services"][name]
        folder = environment(service, "PROMETHEUS_MULTIPROC_DIR")
        assert folder, name
        # A tmpfs: empty at every start and never shared (pids repeat across containers).
        assert folder in service["tmpfs"], name
        mounted = [str(volume).split(":")[1] for volume in service.get("volumes", [])]
        assert folder not in mounted, name


def test_worker_serves_its_metrics_on_a_port_of_its_own(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    port = environment(worker, "WORKER_METRICS_PORT")
    assert port is not None
    assert port.isdigit()
    assert port in [str(exposed) for exposed in worker["expose"]]


def test_worker_stop_grace_period_is_longer_than_its_drain(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    drain = environment(worker, "WORKER_DRAIN_SECONDS")
    drain_seconds = float(drain) if drain else Settings.model_fields["worker_drain_seconds"].default
    # The drain, then handing unfinished runs back (a step gets 2 s to stop), with room to spare.
    assert seconds(worker["stop_grace_period"]) >= drain_seconds + 10


def test_web_stop_grace_period_is_longer_than_gunicorn_graceful_timeout(
    compose: dict[str, Any],
) -> None:
    command = json.loads(dict(dockerfile_instructions())["CMD"])
    graceful = float(command[command.index("--graceful-timeout") + 1])
    assert seconds(compose["services"]["web"]["stop_grace_period"]) > graceful


def test_beat_has_a_healthcheck_that_reaches_postgres_without_needing_the_lock(
    compose: dict[str, Any],
) -> None:
    check = " ".join(compose["services"]["beat"]["healthcheck"]["test"])
    assert "DATABASE_URL" in check
    assert "advisory" not in check  # the standby does not hold the lock and is healthy too


def test_web_healthcheck_asks_readyz(compose: dict[str, Any]) -> None:
    check = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    assert "/readyz" in check


def test_rabbitmq_runs_only_under_its_profile(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["profiles"] == ["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:")
    assert "healthcheck" in rabbitmq


def test_broker_url_reaches_web_worker_and_beat_empty_by_default(compose: dict[str, Any]) -> None:
    for name in CONVEYOR_SERVICES:
        assert environment(compose["services"][name], "BROKER_URL") == "", name


def test_image_carries_the_example_workflows_where_workflows_dir_points() -> None:
    instructions = dockerfile_instructions()
    copies = [shlex.split(rest) for keyword, rest in instructions if keyword == "COPY"]
    targets = {args[-1] for args in copies if args[-2] == "workflows"}
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    pointed = re.search(r"CONVEYOR_WORKFLOWS_DIR=(\S+)", env)
    assert pointed is not None
    assert pointed[1] in targets


def test_image_installs_the_package_not_editable() -> None:
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    installs = [shlex.split(run.split("&&")[0]) for run in runs if "pip install" in run]
    assert installs, "no pip install in the Dockerfile"
    for words in installs:
        assert "-e" not in words
        assert "--editable" not in words
        assert words[-1] == "."


def test_image_entrypoint_empties_the_metrics_folder_before_the_command(tmp_path: Path) -> None:
    entrypoint = json.loads(dict(dockerfile_instructions())["ENTRYPOINT"])
    metrics_dir = tmp_path / "metrics"
    (metrics_dir / "old").mkdir(parents=True)
    (metrics_dir / "counter_7.db").write_bytes(b"stale")
    (metrics_dir / "old" / "gauge_livesum_7.db").write_bytes(b"stale")
    started = subprocess.run(
        [*entrypoint, "sh", "-c", 'ls -A "$PROMETHEUS_MULTIPROC_DIR"; echo "args:$0"', "x y"],
        capture_output=True, text=True, timeout=10, check=True,
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )  # fmt: skip
    assert started.stdout == "args:x y\n"  # an empty folder, and the command's own arguments
