"""A worker cut off from Postgres mid-run, on hosts of their own (tests/multihost/cluster.py).

The worker that runs the first step (worker-a or worker-b, whichever took the run) loses its
route to Postgres during the second step, and only to Postgres: its packets to and from the db
host's port 5432 are dropped silently (Host.cut_off_from, policy routing in its namespace),
while it still reaches Redis (the broker) on the same host. Its lease (RUN_LEASE_SECONDS=6) runs
out; the reaper (`maintenance.requeue_stale_runs`, fired by the test through the broker as beat
would, with older_than_seconds=0 instead of beat's 30 s period) hands the run to the other
worker, which finishes it. Then the route comes back, the statements the cut-off worker sent
meanwhile reach Postgres, and the attempt fence refuses them.

The scenario runs once (a module fixture); each test checks one consequence of it. One broker
round (Redis): the fence is Postgres's. The last test cuts a host off while it holds the run row
inside a transaction, which today keeps the run from any successor (an expected failure).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.multihost.cluster import POSTGRES_PORT, WORKERS, wait_for
from tests.multihost.fence_cluster import (
    FINAL,
    HOLD_THE_RUN_ROW,
    LATE_WRITES_SECONDS,
    LEASE_LOST,
    LEASE_SECONDS,
    FenceCluster,
    claim_within,
    hand_over,
    insert_running_run,
    poll,
    progress_written,
    run_row,
    sessions_from,
    settled,
    step_host,
    stored,
    submit,
)
from tests.multihost.fence_workflows import PROGRESS, REFUSED, STEPS
from tests.multihost.lifecycle import cluster_for_module
from tests.support import REPO, token_for

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def fence_cluster(request: pytest.FixtureRequest) -> Iterator[FenceCluster]:
    """Postgres and Redis on the db host, web-a, worker-a and worker-b; torn down even when a
    test fails, its logs kept then (or with MULTIHOST_KEEP_LOGS=1)."""

    def start(running: FenceCluster) -> None:
        running.start_postgres()
        running.start_redis()
        running.migrate()
        running.start_web()
        running.start_workers()
        running.wait_until_serving()

    with cluster_for_module(request, FenceCluster, start) as running:
        yield running


@dataclass
class CutOff:
    """What the scenario saw: the run, the worker cut off and the one that took over, the
    stored state when the run completed (still cut off) and once the late statements landed."""

    run_id: str
    user: uuid.UUID
    cut: str
    other: str
    at_completion: dict[str, Any]
    after_late_writes: dict[str, Any]
    cut_log: list[dict[str, Any]]


@pytest.fixture(scope="module")
def cut_off(fence_cluster: FenceCluster) -> CutOff:
    """Run the scenario once: cut the worker running the run off from Postgres during its second
    step, hand the run on, let the other worker finish it, then give the route back."""
    cluster = fence_cluster
    user = uuid.uuid4()
    run_id = submit(cluster, user)
    first = wait_for(lambda: step_host(cluster, run_id, STEPS[0]), 30, "step one completed")
    hostnames = {cluster.worker_hosts[name].hostname: name for name in WORKERS}
    cut = hostnames[first]
    (other,) = set(WORKERS) - {cut}
    host = cluster.worker_hosts[cut]
    # Right after a progress write of step two committed: the worker is in its pause, with no
    # transaction open, and its next write comes after the cut.
    poll(lambda: progress_written(cluster, run_id, STEPS[1]), 10, "step two's first progress")
    host.cut_off_from(cluster.db_host.address, POSTGRES_PORT)
    try:
        wait_for(
            lambda: run_row(cluster, run_id)["expired"], LEASE_SECONDS + 10, "the lease expiring"
        )
        hand_over(cluster, run_id, cut)
        wait_for(lambda: run_row(cluster, run_id)["status"] in FINAL, 30, f"run {run_id} finishing")
        at_completion = stored(cluster, run_id)
    finally:
        host.end_cut_off()
    cut_log = wait_for(
        lambda: settled(cluster, cut, run_id),
        LATE_WRITES_SECONDS,
        f"{cut} logging {LEASE_LOST} with none of its progress writes in flight",
    )
    return CutOff(
        run_id=run_id,
        user=user,
        cut=cut,
        other=other,
        at_completion=at_completion,
        after_late_writes=stored(cluster, run_id),
        cut_log=cut_log,
    )


def test_the_other_worker_finishes_the_run_on_its_second_attempt(
    fence_cluster: FenceCluster, cut_off: CutOff
) -> None:
    response = requests.get(
        f"{fence_cluster.web_url}/api/runs/{cut_off.run_id}",
        headers={"Authorization": f"Bearer {token_for(cut_off.user)}"},
        timeout=10,
    )

    assert response.status_code == 200, response.text
    view = response.json()
    assert (view["status"], view["attempts"]) == ("completed", 2), view
    other_host = fence_cluster.worker_hosts[cut_off.other].hostname
    assert view["output"] == {"step": STEPS[-1], "host": other_host}


def test_the_cut_off_worker_logs_its_lease_lost_once_it_reaches_postgres_again(
    cut_off: CutOff,
) -> None:
    lost = [record for record in cut_off.cut_log if record["event"] == LEASE_LOST]

    assert [record.get("attempt") for record in lost] == [1], cut_off.cut_log


def test_a_progress_write_sent_while_cut_off_is_refused_by_the_fence(cut_off: CutOff) -> None:
    """The write stalled in the dropped connection reaches Postgres after the successor's claim:
    the run row no longer names attempt 1, so the step is told LeaseLost and nothing is stored."""
    refused = [
        (record["step"], record["error"])
        for record in cut_off.cut_log
        if record["event"] == REFUSED
    ]

    assert refused == [(STEPS[1], "LeaseLost")], cut_off.cut_log


def test_nothing_reaches_the_database_from_the_cut_off_worker_after_the_run_completed(
    cut_off: CutOff,
) -> None:
    assert cut_off.after_late_writes == cut_off.at_completion


def test_the_cut_off_workers_progress_all_precedes_its_successors(
    fence_cluster: FenceCluster, cut_off: CutOff
) -> None:
    hosts = {
        name: fence_cluster.worker_hosts[name].hostname for name in (cut_off.cut, cut_off.other)
    }
    progress = [
        (event["seq"], event["data"]["host"])
        for event in cut_off.after_late_writes["events"]
        if event["event"] == PROGRESS
    ]
    cut_seqs = [seq for seq, host in progress if host == hosts[cut_off.cut]]
    other_seqs = [seq for seq, host in progress if host == hosts[cut_off.other]]

    assert cut_seqs, progress
    assert other_seqs, progress
    assert max(cut_seqs) < min(other_seqs), progress


def test_every_step_completes_once_and_the_run_finishes_once(
    fence_cluster: FenceCluster, cut_off: CutOff
) -> None:
    state = cut_off.after_late_writes
    events = state["events"]
    completed = [e["data"].get("step") for e in events if e["event"] == "step_completed"]
    finals = [e for e in events if e["event"] == "workflow_status_update"
              and e["data"]["status"] in FINAL]  # fmt: skip
    hosts = {name: fence_cluster.worker_hosts[name].hostname for name in WORKERS}

    assert sorted(completed) == sorted(STEPS), completed
    assert [e["data"]["status"] for e in finals] == ["completed"]
    assert finals[0]["seq"] == events[-1]["seq"]  # nothing after the final status
    assert [(s["name"], s["status"], s["output"]["host"]) for s in state["steps"]] == [
        (STEPS[0], "completed", hosts[cut_off.cut]),
        *((name, "completed", hosts[cut_off.other]) for name in STEPS[1:]),
    ]


def test_a_worker_cut_off_inside_a_transaction_does_not_keep_its_run_from_a_successor(
    fence_cluster: FenceCluster,
) -> None:
    """Every fenced write locks the run row first, so a cut can land while a worker holds it.
    Once the lease has expired, a successor's claim must not wait on that vanished session
    for longer than about another lease."""
    cluster = fence_cluster
    run_id = insert_running_run(cluster, lease_seconds=2)
    host = cluster.ops_host  # a host of its own; the holder builds its pool as a worker does
    argv = [sys.executable, "-c", HOLD_THE_RUN_ROW, run_id]
    holder = host.start(
        cluster.in_host(argv), env=cluster.env(), log=cluster.logs / "holder.log", cwd=REPO
    )
    try:
        try:  # only the claim's outcome may be the expected failure
            wait_for(lambda: "holding" in cluster.log("holder"), 30, "the holder taking the row")
            host.cut_off_from(cluster.db_host.address, POSTGRES_PORT)
            wait_for(lambda: run_row(cluster, run_id)["expired"], 10, "the lease expiring")
        except AssertionError as exc:
            pytest.fail(f"setting up the cut: {exc}")

        attempt = claim_within(cluster, run_id, 3 * LEASE_SECONDS)
    finally:
        host.end_cut_off()
        holder.kill()

    assert attempt == 2, sessions_from(cluster, host.address)
