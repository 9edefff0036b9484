"""deploy/k8s/: valid Kubernetes objects (checked offline against the schemas kubernetes-validate
bundles) for web with its probes, a worker per queue that drains before it is killed, two
schedulers and the disruption budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from conveyor.constants import QUEUES

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest Kubernetes release the manifests promise to work on, and the newest bundled.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def load_all() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every document under deploy/k8s."""
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


OBJECTS = load_all()


def named(kind: str) -> dict[str, dict[str, Any]]:
    """The objects of a kind, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in OBJECTS if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The deployment's one container."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config() -> dict[str, str]:
    """The ConfigMap every process reads."""
    data: dict[str, str] = named("ConfigMap")["conveyor-config"]["data"]
    return data


def workers() -> dict[str, dict[str, Any]]:
    """The worker Deployments, by the queue each consumes."""
    found = {}
    for deployment in named("Deployment").values():
        args = container(deployment)["args"]
        if args[:4] == ["celery", "-A", "worker.app", "worker"]:
            found[args[args.index("--queues") + 1]] = deployment
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", [doc for _, doc in OBJECTS], ids=[f"{name}:{doc['kind']}" for name, doc in OBJECTS]
)
def test_manifest_is_a_valid_kubernetes_object(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_web_liveness_asks_livez_and_readiness_asks_readyz() -> None:
    web = container(named("Deployment")["conveyor-web"])
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_web_grace_period_covers_the_pre_stop_pause_and_gunicorn_graceful_timeout() -> None:
    deployment = named("Deployment")["conveyor-web"]
    web = container(deployment)
    graceful = float(web["args"][web["args"].index("--graceful-timeout") + 1])
    pause = float(web["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert (
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + graceful
    )


def test_there_is_one_worker_deployment_per_queue() -> None:
    assert sorted(workers()) == sorted(QUEUES)


def test_every_worker_grace_period_is_longer_than_its_drain() -> None:
    drain = float(config()["WORKER_DRAIN_SECONDS"])
    for queue, deployment in workers().items():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # The drain, then the hand-back of unfinished runs (a step gets 2 s to stop), and room.
        assert grace >= drain + 10, queue


def test_every_worker_serves_its_metrics_port() -> None:
    for queue, deployment in workers().items():
        worker = container(deployment)
        port = {item["name"]: item["value"] for item in worker["env"]}["WORKER_METRICS_PORT"]
        assert {"name": "metrics", "containerPort": int(port)} in worker["ports"], queue


def test_web_and_workers_keep_metric_files_in_a_pod_local_folder() -> None:
    folder = config()["PROMETHEUS_MULTIPROC_DIR"]
    for name, deployment in named("Deployment").items():
        if name == "conveyor-beat":
            continue
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts[folder]], name


def test_containers_keep_the_image_entrypoint_that_empties_the_metrics_folder() -> None:
    for name, doc in OBJECTS:
        pod = doc["spec"]["template"]["spec"] if doc["kind"] in ("Deployment", "Job") else None
        for spec in (pod or {}).get("containers", []):
            assert "command" not in spec, f"{name}: {spec['name']} overrides the entrypoint"


def test_beat_runs_two_replicas_for_the_lock_to_choose_from() -> None:
    beat = named("Deployment")["conveyor-beat"]
    assert beat["spec"]["replicas"] == 2
    assert container(beat)["args"][:4] == ["celery", "-A", "worker.app", "beat"]


def test_beat_liveness_does_not_require_the_lock() -> None:
    probe = " ".join(
        container(named("Deployment")["conveyor-beat"])["livenessProbe"]["exec"]["command"]
    )
    assert "DATABASE_URL" in probe
    assert "advisory" not in probe


@pytest.mark.parametrize("component", ["web", "worker"])
def test_a_disruption_budget_covers_the_component(component: str) -> None:
    pods = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in named("Deployment").values()
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    covered = [
        labels
        for labels in pods
        for budget in named("PodDisruptionBudget").values()
        if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert covered, f"no PodDisruptionBudget selects the {component} pods"
