"""Conveyor on several hosts, for real: two web hosts, two workers and beat, each in its own
network namespace with its own hostname and an empty temporary folder; Postgres and Redis on a
db host; `conveyor` run by an operator on an ops host; Supabase Storage (the fake) on the bridge.
The test talks to them from the root namespace, over the bridge only (tests/multihost/cluster.py).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

import tests.workflows_for_tests  # noqa: F401 - the workflows the hosts load too
from conveyor.settings import Settings
from tests.acceptance.websocket_clients import Socket
from tests.multihost.cluster import (
    BEATS,
    BUCKET,
    METRICS_TOKEN,
    WEBS,
    WORKER_METRICS_PORT,
    WORKERS,
    Cluster,
    wait_for,
)
from tests.support import REPO, token_for

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(120)]

# Over the inline limit, so the output goes to Storage.
BIG = 3 * Settings.model_fields["output_inline_max_bytes"].default
RUN_SECONDS = 30.0
FINAL = ("completed", "failed", "cancelled")
PERIODIC_JOB = "dispatch_runs"  # every 5 s: two periods within the test's time
BEAT_SECONDS = 25.0
# A standby tries the lock every 5 s; Postgres needs some seconds more to drop a vanished
# client's session (TCP keepalives), which a killed process's closed socket does at once.
TAKEOVER_SECONDS = 25.0
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def submit_big_output(cluster: Cluster, user: uuid.UUID, web: str = WEBS[0]) -> str:
    """Submit a run of `big_output` to a web host; its id."""
    response = requests.post(
        f"{cluster.web_urls[web]}/api/agents/workflows/execute",
        json={"workflow_id": "big_output", "inputs": {"size": BIG}, "async": True},
        headers={"Authorization": f"Bearer {token_for(user)}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def follow(cluster: Cluster, user: uuid.UUID, run_id: str) -> list[dict[str, Any]]:
    """The run's events over web-a's websocket, from the first until a final status."""
    url = cluster.web_url.replace("http://", "ws://") + "/api/ws/workflows"
    socket = Socket(f"{url}?token={quote(token_for(user))}")
    try:
        socket.send(type="subscribe", topic=f"workflow_run:{run_id}", since=0)
        assert socket.recv()["type"] == "subscribed"
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + RUN_SECONDS
        while not received or received[-1]["data"].get("status") not in FINAL:
            assert time.monotonic() < deadline, f"run {run_id} not final: {received}"
            received.append(socket.recv())  # each wait bounded by the socket's timeout
        return received
    finally:
        socket.close()


def get(cluster: Cluster, web: str, path: str, user: uuid.UUID) -> requests.Response:
    """GET path from a web host as user."""
    return requests.get(
        f"{cluster.web_urls[web]}{path}", headers={"Authorization": f"Bearer {token_for(user)}"},
        timeout=10,
    )  # fmt: skip


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of a series' samples matching labels in a Prometheus exposition."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def worker_metrics(cluster: Cluster, name: str) -> str:
    """GET /metrics from a worker's own host, at WORKER_METRICS_PORT."""
    url = f"http://{cluster.worker_hosts[name].address}:{WORKER_METRICS_PORT}/metrics"
    try:
        response = requests.get(url, headers=METRICS, timeout=5)
    except requests.ConnectionError as exc:
        raise AssertionError(
            f"{name}: nothing serves {url} although WORKER_METRICS_PORT={WORKER_METRICS_PORT} is "
            "set (is worker/metrics_http.py's MetricsServer added to the worker's steps?)"
        ) from exc
    assert response.status_code == 200, response.text
    return response.text


def maintenance_runs(cluster: Cluster, job: str) -> list[dict[str, Any]]:
    """The job's rows in maintenance_runs (one per period claimed), read over the bridge."""
    with psycopg.connect(cluster.database_url, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(
            "select period_key, status, claimed_by from conveyor.maintenance_runs "
            "where job = %s order by period_key",
            (job,),
        ).fetchall()


def test_web_lists_both_workers_by_the_hostnames_of_their_hosts(cluster: Cluster) -> None:
    assert set(cluster.live_workers()) == {cluster.worker_name(name) for name in WORKERS}


def test_a_run_submitted_to_web_is_followed_over_its_websocket_until_completed(
    cluster: Cluster,
) -> None:
    user = uuid.uuid4()
    run_id = submit_big_output(cluster, user)

    received = follow(cluster, user, run_id)

    assert received[-1]["data"]["status"] == "completed", received
    assert [m["seq"] for m in received] == list(range(1, len(received) + 1))


def test_a_run_submitted_to_one_web_host_is_followed_live_on_another(cluster: Cluster) -> None:
    user = uuid.uuid4()
    url = cluster.web_urls[WEBS[1]].replace("http://", "ws://") + "/api/ws/workflows"
    socket = Socket(f"{url}?token={quote(token_for(user))}")
    try:
        # Subscribed to the user's topic before the run exists: what arrives comes live, through
        # Redis's pub/sub, from the web host that took the submit and the worker that ran it.
        socket.send(type="subscribe", topic=f"user:{user}")
        assert socket.recv()["type"] == "subscribed"
        run_id = submit_big_output(cluster, user, web=WEBS[0])
        statuses: list[str] = []
        deadline = time.monotonic() + RUN_SECONDS
        while not statuses or statuses[-1] not in FINAL:
            assert time.monotonic() < deadline, f"run {run_id} not final: {statuses}"
            message = socket.recv()
            assert message["topic"] == f"workflow_run:{run_id}", message
            statuses.append(message["data"]["status"])
    finally:
        socket.close()

    assert statuses[-1] == "completed", statuses


def test_a_large_output_written_on_a_worker_host_is_read_back_through_web_from_storage(
    cluster: Cluster,
) -> None:
    """Run on a worker host, read back through web: only Storage, which they all reach over
    the bridge, has the bytes (each host's temporary folder is its own)."""
    user = uuid.uuid4()
    run_id = submit_big_output(cluster, user)
    assert follow(cluster, user, run_id)[-1]["data"]["status"] == "completed"
    uploaded = {path for method, path in cluster.storage.requests if method == "POST"}
    assert any(f"/object/{BUCKET}/{run_id}/" in path for path in uploaded), uploaded
    reads_before = len(cluster.storage.requests)

    response = get(cluster, WEBS[0], f"/api/runs/{run_id}/output", user)

    assert response.status_code == 200, response.text[:500]
    assert response.json() == {"output": {"blob": "x" * BIG}}
    downloads = [p for m, p in cluster.storage.requests[reads_before:] if m == "GET"]
    assert any(f"/object/{BUCKET}/{run_id}/" in path for path in downloads), downloads


def test_a_web_host_reaching_storage_by_another_url_reads_the_outputs_workers_stored(
    cluster: Cluster,
) -> None:
    user = uuid.uuid4()
    run_id = submit_big_output(cluster, user)
    assert follow(cluster, user, run_id)[-1]["data"]["status"] == "completed"

    response = get(cluster, WEBS[1], f"/api/runs/{run_id}/output", user)

    assert response.status_code == 200, response.text[:500]
    assert response.json() == {"output": {"blob": "x" * BIG}}


def test_web_serves_its_metrics_with_queue_depths_read_over_the_bridge(cluster: Cluster) -> None:
    def scrape() -> str:
        response = requests.get(f"{cluster.web_url}/metrics", headers=METRICS, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    submitted = "conveyor_runs_submitted_total"
    before = samples(scrape(), submitted, workflow="big_output")
    user = uuid.uuid4()
    run_id = submit_big_output(cluster, user)
    follow(cluster, user, run_id)  # ended here, so it is no other test's unfinished run

    text = scrape()

    assert samples(text, submitted, workflow="big_output") - before == 1
    depths = [
        s.labels["queue"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "conveyor_queue_depth"
    ]
    assert set(depths) >= {"runs", "maintenance"}, depths


def test_each_worker_serves_its_metrics_on_its_own_host_and_they_count_a_finished_run(
    cluster: Cluster,
) -> None:
    if not (REPO / "worker" / "metrics_http.py").exists():
        pytest.fail(
            "worker/metrics_http.py does not exist yet: workers do not serve GET /metrics at "
            "WORKER_METRICS_PORT, so a worker's metrics cannot be scraped from its host"
        )
    finished = "conveyor_runs_finished_total"
    before = {name: samples(worker_metrics(cluster, name), finished) for name in WORKERS}
    user = uuid.uuid4()
    run_id = submit_big_output(cluster, user)
    assert follow(cluster, user, run_id)[-1]["data"]["status"] == "completed"

    after = {name: samples(worker_metrics(cluster, name), finished) for name in WORKERS}

    assert sum(after.values()) - sum(before.values()) == 1, (before, after)


def test_the_beat_holding_the_lock_fires_a_periodic_job_every_period(cluster: Cluster) -> None:
    def two_periods_done() -> list[dict[str, Any]]:
        done = [r for r in maintenance_runs(cluster, PERIODIC_JOB) if r["status"] == "succeeded"]
        return done if len(done) >= 2 else []

    done = wait_for(two_periods_done, BEAT_SECONDS, f"two periods of {PERIODIC_JOB} done")

    # The worker that ran each period claimed it under its own node name (celery@<hostname>).
    workers = {cluster.worker_name(name) for name in WORKERS}
    assert {row["claimed_by"] for row in done} <= workers, done
    assert len(cluster.beats_holding_the_lock()) == 1


def test_conveyor_status_on_an_operator_host_sees_both_workers_and_the_periodic_jobs(
    cluster: Cluster,
) -> None:
    wait_for(lambda: maintenance_runs(cluster, PERIODIC_JOB), BEAT_SECONDS, f"{PERIODIC_JOB} runs")

    result = cluster.run_cli("status", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    workers = {worker["hostname"] for worker in report["queues"]["workers"]}
    assert workers == {cluster.worker_name(name) for name in WORKERS}
    assert PERIODIC_JOB in {run["job"] for run in report["maintenance"]}


def test_a_standby_beat_takes_over_when_the_active_beats_host_drops_off_the_network(
    cluster: Cluster,
) -> None:
    """Unlike a killed process, a host that vanishes sends no FIN or RST: Postgres must find out
    by itself that the lock holder's session is dead before the standby can take the lock."""
    if cluster.broker != "redis":
        pytest.skip("the scheduler lock is Postgres's: one broker round covers it")
    (active,) = wait_for(cluster.beats_holding_the_lock, BEAT_SECONDS, "a beat taking the lock")
    (standby,) = set(BEATS) - {active}
    cluster.beat_hosts[active].disconnect()
    try:
        wait_for(
            lambda: standby in cluster.beats_holding_the_lock(),
            TAKEOVER_SECONDS,
            f"{standby} taking the scheduler lock after {active}'s host dropped off",
        )
    finally:
        cluster.beat_hosts[active].reconnect()
