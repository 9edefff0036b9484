"""The cluster and helpers of tests/multihost/test_cut_off_worker.py: the multihost cluster with
a short lease and the fence workflow (tests/multihost/fence_workflows.py), reads of the run over
the bridge, the workers' log records, and the reaper fired through the broker.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import requests
from psycopg.rows import dict_row

from conveyor.cli.main import gunicorn_command
from conveyor.constants import TASK_REQUEUE_STALE_RUNS
from tests.multihost.cluster import WEB_PORT, WEBS, Cluster, wait_for
from tests.multihost.fence_workflows import PROGRESS, REFUSED, SENDING, WORKFLOW, WRITTEN
from tests.multihost.network import Network
from tests.support import make_settings, token_for
from worker.celery_app import create_celery

LEASE_SECONDS = 6
WORKFLOW_MODULES = "tests.workflows_for_tests,tests.multihost.fence_workflows"
FINAL = ("completed", "failed", "cancelled")
LEASE_LOST = "run_lease_lost"  # what conveyor/runs/execution.py logs when the fence refuses
FIRE_EVERY = 2.0  # seconds between two firings of the reaper
HANDOVER_SECONDS = 40.0
# After the route is back, a stalled connection resumes at its next TCP retransmission, and
# their interval doubles while the route is down (up to ~25 s after a cut of ~15 s).
LATE_WRITES_SECONDS = 75.0


class FenceCluster(Cluster):
    """The multihost cluster with a short lease, the fence workflow, and one web host; no beat
    (the test fires the reaper)."""

    def __init__(self, network: Network) -> None:
        super().__init__(network, "redis")
        self.web_urls = {WEBS[0]: self.web_urls[WEBS[0]]}

    def env(self, **extra: str) -> dict[str, str]:
        """The cluster's environment, with the lease and workflow modules of this test."""
        return super().env(
            **{
                "RUN_LEASE_SECONDS": str(LEASE_SECONDS),
                "CONVEYOR_WORKFLOW_MODULES": WORKFLOW_MODULES,
                **extra,
            }
        )

    def start_web(self) -> None:
        """One small gunicorn on web-a: the test submits and reads there."""
        host = self.web_hosts[WEBS[0]]
        command = gunicorn_command(
            sys.executable, host=host.address, port=WEB_PORT, workers=1, threads=4
        )
        self.start_conveyor(host, shlex.split(command), WEBS[0])


def query(cluster: Cluster, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of one statement, read over the bridge from the root namespace."""
    with psycopg.connect(cluster.database_url, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def stored(cluster: Cluster, run_id: str) -> dict[str, Any]:
    """The run's row, steps and events as Postgres holds them."""
    (run,) = query(
        cluster,
        "select status, attempt, output, finished_at from conveyor.workflow_runs where id = %s",
        run_id,
    )
    steps = query(
        cluster,
        "select position, name, status, attempt, output, finished_at from conveyor.workflow_steps "
        "where run_id = %s order by position",
        run_id,
    )
    events = query(
        cluster,
        "select seq, event, data from conveyor.run_events where run_id = %s order by seq",
        run_id,
    )
    return {"run": run, "steps": steps, "events": events}


def records(cluster: Cluster, name: str, run_id: str) -> list[dict[str, Any]]:
    """The JSON log records a process wrote about run_id."""
    found = []
    for line in cluster.log(name).splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("run_id") == run_id:
                found.append(record)
    return found


def poll(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """wait_for, polled faster: the cut must land in a pause between two writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def step_host(cluster: Cluster, run_id: str, step: str) -> str | None:
    """The host that completed step, once it is completed."""
    rows = query(
        cluster,
        "select output from conveyor.workflow_steps "
        "where run_id = %s and name = %s and status = 'completed'",
        run_id,
        step,
    )
    return rows[0]["output"]["host"] if rows else None


def progress_written(cluster: Cluster, run_id: str, step: str) -> bool:
    """Whether a progress event of step is stored."""
    return bool(
        query(
            cluster,
            "select 1 from conveyor.run_events "
            "where run_id = %s and event = %s and data->>'step' = %s",
            run_id,
            PROGRESS,
            step,
        )
    )


def run_row(cluster: Cluster, run_id: str) -> dict[str, Any]:
    """The run's status, attempt, and whether its lease has expired."""
    (row,) = query(
        cluster,
        "select status, attempt, coalesce(lease_expires_at < now(), false) as expired "
        "from conveyor.workflow_runs where id = %s",
        run_id,
    )
    return row


def sessions_from(cluster: Cluster, address: str) -> list[dict[str, Any]]:
    """Postgres's sessions from a host: one left inside a transaction holds its row locks."""
    return query(
        cluster,
        "select pid, state, xact_start, left(query, 120) as query from pg_stat_activity "
        "where client_addr = %s::inet",
        address,
    )


def settled(cluster: Cluster, name: str, run_id: str) -> list[dict[str, Any]] | None:
    """The worker's records about run_id once it logged its lease lost and no progress write of
    its own is still in flight (each one sent has been written or refused)."""
    found = records(cluster, name, run_id)
    events = [record["event"] for record in found]
    in_flight = events.count(SENDING) - events.count(WRITTEN) - events.count(REFUSED)
    return found if LEASE_LOST in events and in_flight == 0 else None


def submit(cluster: Cluster, user: uuid.UUID) -> str:
    """Submit the fence workflow to web-a; the run's id."""
    response = requests.post(
        f"{cluster.web_url}/api/agents/workflows/execute",
        json={"workflow_id": WORKFLOW, "inputs": {}, "async": True},
        headers={"Authorization": f"Bearer {token_for(user)}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def hand_over(cluster: FenceCluster, run_id: str, cut: str) -> None:
    """Fire the reaper through the broker until another attempt claims the run. A firing, or
    the execute message it publishes, may land on the cut-off worker (it still consumes), where
    it stalls; the next firing goes on."""
    settings = make_settings(
        cluster.database_url, cluster.redis_url, cluster.tmp / "data", broker_url=cluster.broker_url
    )
    app = create_celery(settings)

    def fired_and_claimed() -> bool:
        app.send_task(TASK_REQUEUE_STALE_RUNS, kwargs={"older_than_seconds": 0})
        deadline = time.monotonic() + FIRE_EVERY
        while time.monotonic() < deadline:
            if run_row(cluster, run_id)["attempt"] >= 2:
                return True
            time.sleep(0.2)
        return False

    try:
        wait_for(fired_and_claimed, HANDOVER_SECONDS, f"another worker claiming run {run_id}")
    except AssertionError as exc:
        sessions = sessions_from(cluster, cluster.worker_hosts[cut].address)
        raise AssertionError(f"{exc}; {cut}'s sessions on Postgres: {sessions}") from exc
    finally:
        app.close()


# A process whose pool is the worker's own (worker.app's resources) takes the run row as every
# fenced write does (lock_held) and keeps its transaction open: the cut lands inside it.
HOLD_THE_RUN_ROW = """
import sys, time
from uuid import UUID
from conveyor.runs.run_rows import lock_held
from worker.app import app
from worker.base import resources_for

with resources_for(app).db.transaction() as conn:
    assert lock_held(conn, UUID(sys.argv[1]), 1) is not None
    print("holding the run row", flush=True)
    time.sleep(120)
"""


def insert_running_run(cluster: Cluster, lease_seconds: float) -> str:
    """A run row claimed by attempt 1 whose lease ends in lease_seconds; its id."""
    (row,) = query(
        cluster,
        "insert into conveyor.workflow_runs (user_id, kind, workflow_id, status, attempt, "
        "lease_expires_at, started_at) values (%s, 'workflow', %s, 'running', 1, "
        "now() + make_interval(secs => %s), now()) returning id",
        uuid.uuid4(),
        WORKFLOW,
        lease_seconds,
    )
    return str(row["id"])


def claim_within(cluster: Cluster, run_id: str, seconds: float) -> int | None:
    """Claim the run as a worker does (conveyor_claim_run); the attempt it got, or None when
    the claim was still blocked after seconds."""
    options = f"-c statement_timeout={round(seconds * 1000)}"
    try:
        with psycopg.connect(cluster.database_url, options=options, connect_timeout=5) as conn:
            row = conn.execute(
                "select attempt from conveyor.conveyor_claim_run(%s, %s)",
                (run_id, LEASE_SECONDS),
            ).fetchone()
    except psycopg.errors.QueryCanceled:
        return None
    return int(row[0]) if row else 0
