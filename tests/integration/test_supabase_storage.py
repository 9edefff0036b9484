"""Large step outputs in Supabase Storage (a loopback server speaking its API), through the engine
against real Postgres and Redis: where they go, and what a Storage outage does to a run."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.ops.maintenance import delete_orphaned_artifacts
from conveyor.runs.artifacts import store_for
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.supabase_storage import BucketMissing, StorageUnavailable, SupabaseArtifactStore
from conveyor.settings import Settings
from tests.fake_storage import StorageServer
from tests.support import new_run

USES_FAKE_STORAGE = True
BUCKET = "conveyor-artifacts"
# Outputs over 4 KiB go to Storage; a worker waits up to 3 s for Storage to come back.
SETTINGS = {
    "output_inline_max_bytes": 4096,
    "storage_wait_seconds": 3.0,
    "cancel_check_seconds": 0.1,
}
BIG = {"size": 20_000}


def run_row(db: Database, run_id: uuid.UUID) -> dict[str, Any]:
    with db.connection() as conn:
        row = conn.execute(
            "select r.status, r.error_code, r.output_url, s.status as step_status, "
            "s.attempt as step_attempt, s.output as step_output, s.output_url as step_url "
            "from workflow_runs r join workflow_steps s on s.run_id = r.id where r.id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return dict(row)


def store(settings: Settings) -> SupabaseArtifactStore:
    configured = store_for(settings)
    assert isinstance(configured, SupabaseArtifactStore)
    return configured


def uploads(storage: StorageServer) -> list[tuple[str, str]]:
    return [(m, p) for m, p in storage.requests if m == "POST" and "/object/" + BUCKET in p]


def test_a_large_output_is_uploaded_to_the_bucket_and_the_row_keeps_its_url(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    run_id = new_run(db, "big_output", BIG).id

    assert execute_run(db, publisher, settings, run_id) is Result.COMPLETED

    row = run_row(db, run_id)
    key = f"{run_id}/1/make.json"  # run/attempt/step
    assert row["step_url"] == f"{storage.url}/storage/v1/object/{BUCKET}/{key}"
    assert json.loads(storage.objects[(BUCKET, key)]) == {"blob": "x" * 20_000}
    assert row["step_output"] == {"stored_at": row["step_url"], "bytes": 20_012}


def test_a_stored_output_reads_back_through_its_url(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    run_id = new_run(db, "big_output", BIG).id
    execute_run(db, publisher, settings, run_id)

    data = store(settings).get(run_row(db, run_id)["step_url"])

    assert json.loads(data) == {"blob": "x" * 20_000}


def test_an_output_stored_through_another_endpoint_reads_back_through_this_hosts_own(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    # A worker may reach the project by its internal URL, web by its public one.
    run_id = new_run(db, "big_output", BIG).id
    execute_run(db, publisher, settings, run_id)
    written = urlsplit(run_row(db, run_id)["step_url"])

    data = store(settings).get(urlunsplit(written._replace(netloc="storage.internal:8000")))

    assert json.loads(data) == {"blob": "x" * 20_000}


def test_a_url_outside_the_bucket_is_refused(settings: Settings, storage: StorageServer) -> None:
    with pytest.raises(ValueError, match="not in this project's bucket"):
        store(settings).get(f"{storage.url}/storage/v1/object/someone-elses/{uuid.uuid4()}.json")


def test_a_storage_outage_shorter_than_the_wait_keeps_the_claim_and_the_step_runs_once(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.fail_next(2)  # two uploads answered 503, the third stored
    run_id = new_run(db, "big_output", BIG).id

    assert execute_run(db, publisher, settings, run_id) is Result.COMPLETED

    row = run_row(db, run_id)
    assert (row["status"], row["step_attempt"]) == ("completed", 1)
    assert len(uploads(storage)) == 3
    assert (BUCKET, f"{run_id}/1/make.json") in storage.objects


def test_a_storage_outage_longer_than_the_wait_queues_the_run_again_with_its_attempt_uncounted(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.outage()
    run_id = new_run(db, "big_output", BIG).id

    with pytest.raises(StorageUnavailable, match="503"):
        execute_run(db, publisher, settings, run_id)

    row = run_row(db, run_id)
    assert (row["status"], row["error_code"]) == ("queued", None)
    assert (row["step_status"], row["step_attempt"]) == ("pending", 0)


def test_a_run_queued_by_a_storage_outage_completes_once_storage_is_back(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.outage()
    run_id = new_run(db, "big_output", BIG).id
    with pytest.raises(StorageUnavailable):
        execute_run(db, publisher, settings, run_id)
    storage.outage(False)

    assert execute_run(db, publisher, settings, run_id) is Result.COMPLETED

    row = run_row(db, run_id)
    assert (row["status"], row["step_attempt"]) == ("completed", 1)


def test_a_missing_bucket_queues_the_run_again_and_says_to_run_migrate(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.buckets.clear()
    run_id = new_run(db, "big_output", BIG).id

    with pytest.raises(BucketMissing, match="run `conveyor migrate`"):
        execute_run(db, publisher, settings, run_id)

    assert run_row(db, run_id)["status"] == "queued"


def test_a_wrong_service_key_is_retried_not_an_internal_error(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.service_key = "another-project's-key"
    run_id = new_run(db, "big_output", BIG).id

    with pytest.raises(StorageUnavailable, match="403"):
        execute_run(db, publisher, settings, run_id)

    assert run_row(db, run_id)["status"] == "queued"


def test_an_unreachable_storage_is_retried_not_an_internal_error(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    storage.close()
    run_id = new_run(db, "big_output", BIG).id

    with pytest.raises(StorageUnavailable, match="unreachable"):
        execute_run(db, publisher, settings, run_id)

    assert run_row(db, run_id)["status"] == "queued"


def test_ensure_bucket_creates_a_private_bucket(settings: Settings, storage: StorageServer) -> None:
    storage.buckets.clear()

    said = store(settings).ensure_bucket()

    assert said == f"created private bucket {BUCKET!r}"
    assert storage.buckets[BUCKET].public is False


def test_ensure_bucket_leaves_an_existing_bucket_alone(
    settings: Settings, storage: StorageServer
) -> None:
    said = store(settings).ensure_bucket()

    assert said == f"bucket {BUCKET!r} exists"
    assert [m for m, p in storage.requests if p.endswith("/bucket")] == []


def test_the_daily_sweep_deletes_the_objects_of_runs_that_no_longer_exist(
    db: Database, settings: Settings, publisher: EventPublisher, storage: StorageServer
) -> None:
    kept, deleted = new_run(db, "big_output", BIG).id, new_run(db, "big_output", BIG).id
    for run_id in (kept, deleted):
        execute_run(db, publisher, settings, run_id)
    with db.transaction() as conn:
        conn.execute("delete from workflow_runs where id = %s", (deleted,))

    assert delete_orphaned_artifacts(db, settings) == 1

    assert sorted(path for _, path in storage.objects) == [f"{kept}/1/make.json"]
