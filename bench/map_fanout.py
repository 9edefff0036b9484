"""A 1,000-item `map` of no-op items beside 1,000 bare Celery no-op tasks, in one run, on the same
two worker processes: two solo-pool Celery workers on `runs` (one broker, one Postgres), both
sides alike.

Each round, interleaved: both workers are paused (SIGSTOP), one side's work is queued (N bare
tasks, or one map run whose list step yields N ints), both are resumed and the drain is timed until
the N tasks have counted themselves in Redis, or the run is `completed`. The map's time includes
its list step, the fan-out (one insert of N work items) and the coordinator's resume after the last
item. Sub-step: a `python` no-op by default, because that is the path user code takes (the
supervised step thread) and bench/workflows.py measures per-step overhead the same way;
`--sub-step transform` echoes the item inline instead. Every concurrency given runs in every round;
the one with the lowest median is reported. Lanes loop until no item is left, so with two solo
workers only two lanes run at once, and 2, 4 and 8 differ by noise.

Measured 2026-12-07, 2 shared cores (load average 1-5 from other jobs), embedded Postgres 16:
N=1000, python no-op, two runs: bare 1.73 s and 0.94 s, map 2.13 s and 1.86 s, so the overhead
is 0.40 and 0.92 ms/item and the ratio 1.23 and 1.99. The concurrencies 2, 4 and 8 were within
noise of each other. N=10,000, concurrency 2: bare 16.6 s, map 63.7 s, i.e. 6.4 ms/item, so the
cost per item grows with N; see below.
Where a map item's time goes (--profile, N=1000):
- pg_stat, per item: 2.02 transactions, 2 updates of run_work_items and 1.02 of workflow_runs.
  These are `take`, then `record_end`: the run-lease update, the item update, and a count over
  all of the run's items. The watch's check-ins (every cancel_check_seconds) and lease renewals
  (every lease/3) are counted per lane per second, not per item.
- Timed alone: take 0.58 ms, record_end 1.28 ms, a one-row write+commit 0.49 ms.
- One lane under cProfile, 3.6 ms/item: take 0.8, record_end 1.7, the attempt 0.9 (of which
  0.3-0.7 is the supervised step thread), commits 0.6-0.8.
- record_end holds the run row's lock from its first statement to its commit, so lanes run it
  one at a time. Its count reads every item of the run: 0.2 ms at N=1k, 1.6 ms at 10k (record_end
  2.9 ms at 10k). That is why the map slows down per item as N grows. An `exists` on the
  partial index run_work_items_unfinished takes 0.04 ms.
After those figures, record_end stopped counting (an exists on that index; counts only for a
progress event), locks the run row instead of rewriting it, and takes the lane's next item in
the same transaction. Measured again at 18:45, load average 0.8: N=1000, bare 0.996 s, map
1.414 s (c=4), 0.42 ms/item overhead, ratio 1.42; N=10,000 (1 round, c=2): bare 10.27 s, map
12.99 s, 0.27 ms/item, ratio 1.27 (was 63.7 s: the per-item cost no longer grows with N).
Usage: python -m bench.map_fanout [--items 1000] [--rounds 3] [--concurrency 2,4,8]
       [--sub-step python|transform] [--profile]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import map_profile
from bench.baseline_tasks import COUNTER_KEY
from bench.harness import BARE_TASK, Bench, bench_environment, stop_processes, wait_until
from bench.map_workflow import CONCURRENCIES, MAP_WORKFLOWS, SUB_STEPS
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.runs.store import create_run
from conveyor.steps.map import MAX_ITEMS
from conveyor.workflows.definitions import Workflow

REPO = Path(__file__).resolve().parent.parent
MAX_ROUNDS = 10
PROFILE_LEASE_SECONDS = 300
FINISHED = ("completed", "failed", "cancelled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="2,4,8", help="values to try, comma-separated")
    parser.add_argument("--sub-step", choices=SUB_STEPS, default="python")
    parser.add_argument("--profile", action="store_true", help="also profile a map item")
    args = parser.parse_args()
    n = max(1, min(args.items, MAX_ITEMS))
    rounds = max(1, min(args.rounds, MAX_ROUNDS))
    tried = [int(value) for value in args.concurrency.split(",") if value.strip()]
    unknown = [value for value in tried if value not in CONCURRENCIES]
    if unknown or not tried:
        parser.error(f"--concurrency takes values among {CONCURRENCIES}")

    environment = bench_environment(CONVEYOR_WORKFLOW_MODULES="bench.map_workflow")
    with environment as bench, second_worker(bench) as other:
        workers = (bench.worker, other)

        def drain_bare() -> float:
            bench.client.delete(COUNTER_KEY)
            pause(workers)
            for _ in range(n):
                bench.celery.send_task(BARE_TASK, args=[bench.redis_url])
            return timed_resume(workers, lambda: int(bench.client.get(COUNTER_KEY) or 0) >= n)

        def drain_map(workflow: Workflow, count: int = n) -> tuple[float, str]:
            pause(workers)
            run_id = submit(bench, workflow, count)
            return timed_resume(workers, lambda: finished(bench, run_id)), run_id

        # Warm up both workers (imports, connections, the catalog) on both paths.
        drain_bare()
        drain_map(MAP_WORKFLOWS[(args.sub_step, tried[0])], 20)

        print(f"load average before: {load()}", flush=True)
        bare: list[float] = []
        mapped: dict[int, list[float]] = {concurrency: [] for concurrency in tried}
        last_run: dict[int, str] = {}
        for index in range(rounds):
            bare.append(drain_bare())
            line = f"round {index + 1}/{rounds}: bare {bare[-1]:.3f} s"
            for concurrency in tried:
                seconds, last_run[concurrency] = drain_map(
                    MAP_WORKFLOWS[(args.sub_step, concurrency)]
                )
                mapped[concurrency].append(seconds)
                line += f", map c={concurrency} {seconds:.3f} s"
            print(line, flush=True)
        print(f"load average after: {load()}", flush=True)
        best = min(tried, key=lambda concurrency: statistics.median(mapped[concurrency]))
        take_to_end, span = map_profile.item_spans(bench.watch, last_run[best])
        if args.profile:
            profile(bench, workers, MAP_WORKFLOWS[(args.sub_step, best)], drain_map, n)

    med = statistics.median
    bare_s, map_s = med(bare), med(mapped[best])
    print()
    print(
        f"n={n} items, {rounds} rounds interleaved, medians; two solo-pool worker processes "
        f"on `runs`, drain only; map sub-step `{args.sub_step}` no-op; concurrency "
        + ", ".join(f"{c}: {med(mapped[c]):.3f} s" for c in tried)
        + f"; best {best}"
    )
    rows = [
        ("bare Celery no-op tasks, wall (s)", f"{bare_s:.3f}"),
        (f"map of no-op items c={best}, wall (s)", f"{map_s:.3f}"),
        ("bare, per task (ms)", f"{bare_s / n * 1000:.3f}"),
        ("map, per item (ms)", f"{map_s / n * 1000:.3f}"),
        ("per-item overhead (ms)", f"{overhead_ms(n, bare_s, map_s):.3f}"),
        ("map wall / bare wall", f"{map_s / bare_s:.2f}"),
        ("last map: first take to last end (s)", f"{span / 1000:.3f}"),
        ("last map: item take-to-end, median (ms)", f"{take_to_end:.3f}"),
    ]
    for label, value in rows:
        print(f"{label:42}{value:>10}")


def profile(
    bench: Bench,
    workers: tuple[subprocess.Popen[bytes], ...],
    workflow: Workflow,
    drain_map: Callable[[Workflow], tuple[float, str]],
    n: int,
) -> None:
    """Rows and transactions per item of one map run on the workers, then each lane statement
    timed here with the workers paused."""
    print("\nprofile: one map run on the workers, per item (pg_stat; the bench's polls taken out)")
    time.sleep(map_profile.STATS_FLUSH_SECONDS)
    rows_before = map_profile.table_counters(bench.watch)
    commits_before, polls_before = map_profile.commits(bench.watch), POLLS[0]
    _, run_id = drain_map(workflow)
    items = count_items(bench, run_id)
    time.sleep(map_profile.STATS_FLUSH_SECONDS)
    rows_after = map_profile.table_counters(bench.watch)
    # Each poll and each counters reading is one autocommit transaction of the bench's own.
    own = POLLS[0] - polls_before + 4
    commits_after = map_profile.commits(bench.watch)
    for line in map_profile.rows_per_item(rows_before, rows_after, items):
        print(line)
    print(f"  transactions committed    {(commits_after - commits_before - own) / items:5.2f}/item")
    pause(workers)  # what follows runs in this process: the workers must not compete for cores
    try:
        times = map_profile.statement_times(bench, workflow, n, PROFILE_LEASE_SECONDS)
        lane = map_profile.lane_breakdown(bench, workflow, n)
    finally:
        resume(workers)
    print(f"profile: lane statements timed in this process, {n} items, workers paused")
    for line in times.lines():
        print(line)
    print("profile: one lane run in this process under cProfile (its overhead included)")
    for line in lane:
        print(line)


@contextmanager
def second_worker(bench: Bench) -> Iterator[subprocess.Popen[bytes]]:
    """A second worker process exactly like the harness's: its command and its environment
    (read back from /proc, so both share the data dir and secrets)."""
    raw = Path(f"/proc/{bench.worker.pid}/environ").read_bytes()
    env = dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)
    worker = subprocess.Popen(bench.worker.args, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        yield worker
    finally:
        worker.send_signal(signal.SIGCONT)  # a paused worker cannot terminate
        stop_processes(worker)


def pause(workers: tuple[subprocess.Popen[bytes], ...]) -> None:
    """Freeze the workers so a side's whole batch is queued before its drain is timed."""
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)


def resume(workers: tuple[subprocess.Popen[bytes], ...]) -> None:
    """Let the workers go on."""
    for worker in workers:
        worker.send_signal(signal.SIGCONT)


def timed_resume(workers: tuple[subprocess.Popen[bytes], ...], done: Callable[[], bool]) -> float:
    """Resume the workers and time until done (bounded by the harness's drain timeout)."""
    start = time.perf_counter()
    resume(workers)
    wait_until(done)
    return time.perf_counter() - start


def submit(bench: Bench, workflow: Workflow, count: int) -> str:
    """What a submit does after validation: insert the run and enqueue it."""
    run = create_run(
        bench.db,
        user_id=bench.user,
        kind=workflow.kind,
        workflow_id=workflow.name,
        input={"count": count},
        metadata={},
        steps=workflow.step_rows(),
    )
    bench.celery.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    return str(run.id)


POLLS = [0]  # the bench's own polling transactions, taken out of the profile's commit count


def finished(bench: Bench, run_id: str) -> bool:
    """Whether the run ended; SystemExit if it ended other than completed."""
    POLLS[0] += 1
    row: tuple[Any, ...] | None = bench.watch.execute(
        "select status, error from workflow_runs where id = %s", (run_id,)
    ).fetchone()
    if row is None or row[0] not in FINISHED:
        return False
    if row[0] != "completed":
        raise SystemExit(f"bench: the map run ended {row[0]}: {row[1]}")
    return True


def count_items(bench: Bench, run_id: str) -> int:
    """How many work items the run has."""
    row = bench.watch.execute(
        "select count(*) from run_work_items where run_id = %s", (run_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def load() -> str:
    """The 1/5/15-minute load averages: the bench shares its cores, so read figures beside them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def overhead_ms(n: int, bare_seconds: float, map_seconds: float) -> float:
    """What each map item costs beyond a bare task: (map wall - bare wall) / n, in ms."""
    return (map_seconds - bare_seconds) / n * 1000


if __name__ == "__main__":
    main()
