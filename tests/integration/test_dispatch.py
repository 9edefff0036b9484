"""conveyor_dispatch_runs on a real Postgres: held runs go out per key within its limit, by
priority, round-robin across keys, within the window; the reaper leaves them alone."""

from __future__ import annotations

import uuid
from uuid import UUID

from conveyor import runs
from conveyor.db import Connection, Database
from conveyor.runs import views
from conveyor.runs.dispatch import Hold, dispatch_in, dispatch_runs, queued_by_key
from conveyor.runs.reaper import runs_to_republish
from conveyor.runs.store import Outcome
from tests.support import new_run


def held(
    db: Database, key: str | None, limit: int | None = None, priority: int | None = None
) -> UUID:
    """A new run held for dispatch with this key, limit and priority."""
    return new_run(db, hold=Hold(key, limit, priority)).id


def finish(db: Database, run_id: UUID) -> list[UUID]:
    """Claim and complete a run as a worker does; the runs its end dispatched."""
    claimed = runs.claim_run(db, run_id, lease_seconds=60)
    assert claimed is not None
    resumed: list[UUID] = []
    assert runs.finish_run(db, claimed[0], Outcome(output={}), resumed=resumed) is not None
    return resumed


def test_a_key_gets_no_more_runs_than_its_limit(db: Database) -> None:
    for _ in range(5):
        held(db, "tenant-a", 2)
    assert len(dispatch_runs(db, 16)) == 2
    assert dispatch_runs(db, 16) == []


def test_the_first_held_runs_of_a_key_go_first(db: Database) -> None:
    ids = [held(db, "tenant-a", 2) for _ in range(5)]
    assert sorted(dispatch_runs(db, 16)) == sorted(ids[:2])


def test_a_held_runs_end_dispatches_the_next_of_its_key(db: Database) -> None:
    ids = [held(db, "tenant-a", 1) for _ in range(3)]
    assert dispatch_runs(db, 16) == [ids[0]]
    assert finish(db, ids[0]) == [ids[1]]


def test_keys_are_served_round_robin(db: Database) -> None:
    a = [held(db, "tenant-a", 10) for _ in range(6)]
    b = [held(db, "tenant-b", 10) for _ in range(2)]
    assert set(dispatch_runs(db, 4)) == {a[0], a[1], b[0], b[1]}


def test_a_later_run_of_higher_priority_goes_first_within_a_key(db: Database) -> None:
    low = [held(db, "tenant-a", 1, priority=2) for _ in range(3)]
    high = held(db, "tenant-a", 1, priority=8)
    assert dispatch_runs(db, 16) == [high]
    assert finish(db, high) == [low[0]]


def test_a_higher_priority_goes_first_across_keys(db: Database) -> None:
    for _ in range(3):
        held(db, "tenant-a", 5, priority=1)
    urgent = held(db, "tenant-b", 5, priority=9)
    assert dispatch_runs(db, 1) == [urgent]


def test_the_window_bounds_published_unclaimed_held_runs(db: Database) -> None:
    for n in range(10):
        held(db, f"tenant-{n}", 1)
    assert len(dispatch_runs(db, 3)) == 3
    assert dispatch_runs(db, 3) == []


def test_a_run_held_for_priority_only_has_no_key_limit(db: Database) -> None:
    ids = [held(db, None, priority=4) for _ in range(5)]
    assert sorted(dispatch_runs(db, 16)) == sorted(ids)


def test_a_dispatch_reads_a_few_rows_per_key_however_many_runs_are_held(db: Database) -> None:
    # Statistics from before the burst, when nothing was held: the planner's worst case.
    with db.transaction() as conn:
        conn.execute("analyze workflow_runs")
    for n in range(400):
        held(db, f"tenant-{n % 4}", 2)
    with db.transaction() as conn:
        before = rows_read(conn)
        picked = dispatch_in(conn, 16)
        read = rows_read(conn) - before
    assert len(picked) == 8
    assert read < 60  # 4 keys: a few probes each, and the 8 picks; not the 400 held


def rows_read(conn: Connection) -> int:
    """This backend's reads of workflow_runs so far: rows seq-scanned and fetched by index."""
    row = conn.execute(
        "select seq_tup_read + idx_tup_fetch as read from pg_stat_xact_user_tables"
        " where relid = 'conveyor.workflow_runs'::regclass"
    ).fetchone()
    assert row is not None
    return int(row["read"])


def test_the_reaper_does_not_republish_held_runs(db: Database) -> None:
    waiting = [held(db, "tenant-a", 1) for _ in range(3)]
    republished = runs_to_republish(db, older_than_seconds=0)
    assert not set(waiting) & set(republished)
    sent = dispatch_runs(db, 16)
    assert runs_to_republish(db, older_than_seconds=0) == sent


def test_a_held_run_is_not_claimed_before_it_is_dispatched(db: Database) -> None:
    first, second = held(db, "tenant-a", 1), held(db, "tenant-a", 1)
    assert dispatch_runs(db, 16) == [first]
    assert runs.claim_run(db, second, lease_seconds=60) is None
    assert runs.claim_run(db, first, lease_seconds=60) is not None


def test_a_run_without_key_or_priority_is_dispatched_at_insert(db: Database) -> None:
    plain = new_run(db)
    held(db, "tenant-a", 1)
    with db.transaction() as conn:
        row = conn.execute(
            "select dispatched_at from workflow_runs where id = %s", (plain.id,)
        ).fetchone()
    assert row is not None
    assert row["dispatched_at"] is not None
    assert plain.id not in dispatch_runs(db, 16)


def test_a_held_runs_status_says_what_it_waits_for(db: Database) -> None:
    run = new_run(db, hold=Hold("tenant-a", 1, None))
    assert run.event is not None
    assert run.event.data["waiting_for"] == "concurrency"
    assert "waiting_for" not in (new_run(db).event or run.event).data


def test_a_held_run_says_what_it_waits_for_with_its_key_and_priority(db: Database) -> None:
    user = uuid.uuid4()
    first = new_run(db, user_id=user, hold=Hold("tenant-a", 1, 7))
    second = new_run(db, user_id=user, hold=Hold("tenant-a", 1, 7))
    dispatch_runs(db, 16)
    claims = {"sub": str(user), "role": "authenticated", "email": None, "app_metadata": {}}

    view = views.get_run(db, claims, second.id)

    assert (view.waiting_for, view.concurrency_key, view.priority) == ("concurrency", "tenant-a", 7)
    assert views.get_run(db, claims, first.id).waiting_for is None


def test_queued_by_key_counts_held_and_in_flight_runs(db: Database) -> None:
    for _ in range(4):
        held(db, "tenant-a", 2)
    held(db, "tenant-b", 3)
    dispatch_runs(db, 16)
    counts = {(q.key, q.held, q.limit, q.in_flight) for q in queued_by_key(db)}
    assert counts == {("tenant-a", 2, 2, 2)}
