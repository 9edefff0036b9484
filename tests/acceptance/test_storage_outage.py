"""A Supabase Storage outage through the API and a real worker: a run whose large output cannot be
stored waits and completes once Storage is back; reading a stored output answers 503 meanwhile."""

from __future__ import annotations

import time

import pytest

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from tests.fake_storage import StorageServer
from tests.support import ApiClient, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")
USES_FAKE_STORAGE = True
# Outputs over 4 KiB go to Storage; a worker holds a run for half a second of outage, then
# queues it again.
SETTINGS = {"output_inline_max_bytes": 4096, "storage_wait_seconds": 0.5}
BLOB = {"blob": "x" * 10_000}


def submit_big_output(client: ApiClient) -> str:
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "big_output", "inputs": {"size": 10_000}, "async": True},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def wait_for_failed_uploads(storage: StorageServer, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for m, p in storage.requests if m == "POST" and "/object/" in p) < count:
        assert time.monotonic() < deadline, f"fewer than {count} uploads: {storage.requests}"
        time.sleep(0.05)


def test_a_run_whose_output_cannot_be_stored_completes_once_storage_is_back(
    client: ApiClient, storage: StorageServer
) -> None:
    storage.outage()
    run_id = submit_big_output(client)
    wait_for_failed_uploads(storage, 2)
    assert client.get(f"/api/runs/{run_id}").json()["status"] in {"queued", "running"}

    storage.outage(False)
    view = wait_for_run(client, run_id, timeout=30)

    assert view["status"] == "completed", view
    assert client.get(f"/api/runs/{run_id}/output").json() == {"output": BLOB}


def test_reading_a_stored_output_while_storage_is_down_answers_503(
    client: ApiClient, storage: StorageServer
) -> None:
    run_id = submit_big_output(client)
    assert wait_for_run(client, run_id)["status"] == "completed"
    storage.outage()

    response = client.get(f"/api/runs/{run_id}/output")

    assert response.status_code == 503
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert "Supabase Storage refused to download (503" in response.json()["error"]
