"""Where a map item's time goes, for bench/map_fanout.py: the lane's own statements (take,
record_end, a lease renewal) timed one by one in this process against the bench's Postgres, and
the rows a map run on the workers wrote per item, from pg_stat_user_tables."""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import BENCH_SECRET, Bench
from bench.map_workflow import MAP_POSITION
from conveyor.runs import fanout, work_items
from conveyor.runs.lanes import execute_lane
from conveyor.runs.store import ClaimedRun, claim_run, create_run
from conveyor.runs.work_items import ItemEnd
from conveyor.settings import Settings
from conveyor.workflows.definitions import Workflow

# What a lane's time per item is spent on: (file, function) as cProfile names them.
LANE_PARTS = {
    "take (one transaction)": ("conveyor/runs/work_items.py", "take"),
    "record_end (one transaction)": ("conveyor/runs/work_items.py", "record_end"),
    "the item's attempt (render, validate, run)": ("conveyor/runs/engine.py", "attempt"),
    "  of which the supervised step thread": ("conveyor/runs/supervision.py", "supervise"),
    "offload check (json.dumps of the output)": ("conveyor/runs/engine.py", "offload"),
    "step_fingerprint": ("conveyor/runs/fingerprints.py", "step_fingerprint"),
    "publishing events to Redis": ("conveyor/events/run_events.py", "publish"),
    "  commits (psycopg transaction exit)": ("psycopg/transaction.py", "__exit__"),
}
TABLES = ("run_work_items", "workflow_runs", "run_events")
STATS_FLUSH_SECONDS = 11.0  # a busy backend reports its counters within PGSTAT_IDLE_INTERVAL


@dataclass
class StatementTimes:
    """Milliseconds per call of each lane statement, over the items of one in-process map."""

    take: list[float]
    record_end: list[float]
    renew: list[float]
    write_commit: list[float]  # a one-row update and its commit: the floor of any write

    def lines(self) -> list[str]:
        """One line per statement: median and p90 ms, and record_end at the start and end."""
        count = len(self.record_end)
        tenth = max(1, count // 10)
        return [
            f"  {name:13} median {median(times):6.3f} ms   p90 {p90(times):6.3f} ms"
            for name, times in (
                ("take", self.take),
                ("record_end", self.record_end),
                ("renew", self.renew),
                ("write+commit", self.write_commit),
            )
        ] + [
            f"  {name}, first {tenth} items {median(times[:tenth]):.3f} ms, "
            f"last {tenth} items {median(times[-tenth:]):.3f} ms"
            for name, times in (("take", self.take), ("record_end", self.record_end))
        ]


def median(values: list[float]) -> float:
    """The median, 0 for no values."""
    return statistics.median(values) if values else 0.0


def p90(values: list[float]) -> float:
    """The 90th percentile, 0 for no values."""
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else median(values)


def timed_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    """fn's result and the milliseconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000


def statement_times(bench: Bench, workflow: Workflow, items: int, lease: int) -> StatementTimes:
    """Take and end each item of a map claimed here as a lane does, timing each statement."""
    claim = claimed_map(bench, workflow, items, lease)
    times = StatementTimes([], [], [], [])
    for _ in range(items):
        taken, ms = timed_ms(
            lambda: work_items.take(
                bench.db, claim, MAP_POSITION, branch=False, lease_seconds=lease
            )
        )
        if taken is None:
            break
        times.take.append(ms)
        _, ms = timed_ms(
            lambda: work_items.renew(bench.db, claim, taken, lease_seconds=lease)  # noqa: B023
        )
        times.renew.append(ms)
        _, ms = timed_ms(lambda: write_commit(bench, claim.id))
        times.write_commit.append(ms)
        recorded, ms = timed_ms(
            lambda: work_items.record_end(
                bench.db, claim, taken,  # noqa: B023
                ItemEnd(output=None), fail_fast=True, progress=False, lease_seconds=lease,
            )
        )  # fmt: skip
        times.record_end.append(ms)
        bench.publisher.publish(*recorded.events)
    return times


def claimed_map(bench: Bench, workflow: Workflow, items: int, lease: int) -> ClaimedRun:
    """A run of `workflow` claimed here (no worker gets a message for it) with its map's items
    written as the coordinator writes them: a lane can now be run on it in this process."""
    run = create_run(
        bench.db,
        user_id=bench.user,
        kind=workflow.kind,
        workflow_id=workflow.name,
        input={"count": items},
        metadata={},
        steps=workflow.step_rows(),
    )
    claimed = claim_run(bench.db, run.id, lease_seconds=lease)
    assert claimed is not None, "the profile's run could not be claimed"
    # The lanes dispatch_map asks for (RunFannedOut) are the caller's.
    with contextlib.suppress(fanout.RunFannedOut):
        fanout.dispatch_map(
            bench.db, bench.publisher, claimed[0], MAP_POSITION, workflow.steps[MAP_POSITION],
            list(range(items)), lease_seconds=lease,
        )  # fmt: skip
    return claimed[0]


def lane_breakdown(bench: Bench, workflow: Workflow, items: int) -> list[str]:
    """One lane over `items` items in this process under cProfile: ms per item in each part."""
    settings = Settings(
        _env_file=None,
        data_dir=Path(tempfile.mkdtemp(prefix="conveyor-bench-lane-")),
        supabase_jwt_secret=BENCH_SECRET,
        database_url=bench.db.url,
        redis_url=bench.redis_url,
    )
    claim = claimed_map(bench, workflow, items, settings.run_lease_seconds)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    result = profiler.runcall(
        execute_lane, bench.db, bench.publisher, settings, claim.id, claim.attempt, MAP_POSITION
    )
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    lines = [f"  one lane, {items} items: {wall / items * 1000:.3f} ms/item ({result.value})"]
    for label, (path, function) in LANE_PARTS.items():
        seconds = sum(
            row[3]
            for (file, _, name), row in stats.items()
            if file.endswith(path) and name == function
        )
        lines.append(f"    {label:44} {seconds / items * 1000:6.3f} ms/item")
    return lines


def write_commit(bench: Bench, run_id: Any) -> None:
    """The cheapest write transaction on the run's row: one update, one commit."""
    with bench.db.transaction() as conn:
        conn.execute("update workflow_runs set updated_at = now() where id = %s", (run_id,))


def table_counters(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int]]:
    """(inserts, updates, deletes) so far per table of TABLES, as the statistics collector has
    them (backends report within PGSTAT_IDLE_INTERVAL; wait STATS_FLUSH_SECONDS first)."""
    conn.execute("select pg_stat_clear_snapshot()")
    rows = conn.execute(
        "select relname, n_tup_ins, n_tup_upd, n_tup_del from pg_stat_user_tables "
        "where relname = any(%s)",
        (list(TABLES),),
    ).fetchall()
    return {str(row[0]): (int(row[1]), int(row[2]), int(row[3])) for row in rows}


def commits(conn: psycopg.Connection[Any]) -> int:
    """Transactions committed in this database so far (all backends, this one included)."""
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select xact_commit from pg_stat_database where datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def rows_per_item(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]], items: int
) -> list[str]:
    """Rows inserted / updated per item per table between two table_counters readings."""
    lines = []
    for table in TABLES:
        old, new = before.get(table, (0, 0, 0)), after.get(table, (0, 0, 0))
        ins, upd = (new[0] - old[0]) / items, (new[1] - old[1]) / items
        lines.append(f"  {table:16} inserted {ins:5.2f}/item   updated {upd:5.2f}/item")
    return lines


def item_spans(conn: psycopg.Connection[Any], run_id: str) -> tuple[float, float]:
    """Median ms from an item's take to its end (started_at to finished_at: both are the
    transaction start, so this is take's commit + the attempt + record_end's begin), and the
    run's map span in ms (first take to last end)."""
    row = conn.execute(
        """
        select percentile_cont(0.5) within group (
                 order by extract(epoch from finished_at - started_at)) * 1000,
               extract(epoch from max(finished_at) - min(started_at)) * 1000
          from run_work_items where run_id = %s
        """,
        (run_id,),
    ).fetchone()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0)
