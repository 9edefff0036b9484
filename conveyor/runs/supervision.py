"""Watching a running run: renew its lease, notice a cancel request, enforce step and run deadlines.

A step attempt runs in a thread while the run's thread keeps checking in. When the run must stop,
the step is told (ctx.stop) and given a moment to wind down; a step that ignores it is abandoned,
its result discarded, because the fenced checkpoint would refuse it anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import structlog

from conveyor.db import Database
from conveyor.runs import checkpoints, shutdown
from conveyor.runs.store import ClaimedRun
from conveyor.steps import StepContext, StepFailure, StepResult, StepStopped

log = structlog.get_logger(__name__)

# How long a step asked to stop may take to notice before it is abandoned.
STOP_GRACE_SECONDS = 2.0


class RunInterrupted(Exception):
    """The run must stop now: cancelled, lease lost, or out of time."""


class RunCancelled(RunInterrupted):
    """Someone asked the run to stop."""


class LeaseLost(RunInterrupted):
    """Another worker holds the run now; write nothing more."""


class RunTimedOut(RunInterrupted):
    """The run exceeded its overall timeout."""


class RunSuspended(RunInterrupted):
    """The run is waiting (sleep, signal, its branches or children) and committed so: this
    attempt ends, no worker holds it until it is resumed (conveyor/runs/waits.py). `enqueue`:
    runs the suspension created (children), to publish after commit."""

    def __init__(self, enqueue: tuple[UUID, ...] = ()) -> None:
        super().__init__()
        self.enqueue = enqueue


class HandedBack(RunInterrupted):
    """This worker is shutting down: give the run back to the queue. attempt_started: the
    current step's attempt was counted (and is given back with the run). step_stopped: False
    when the step's thread did not stop in time, so the run must not be handed back yet."""

    def __init__(self, *, attempt_started: bool = True, step_stopped: bool = True) -> None:
        super().__init__()
        self.attempt_started = attempt_started
        self.step_stopped = step_stopped


@dataclass
class Watch:
    """Checks in for a claimed run at a bounded rate and raises when it has to stop."""

    db: Database
    claim: ClaimedRun
    lease_seconds: int
    check_every: float
    run_deadline: float  # time.monotonic()
    # Once the worker drains, the run may go on (and finish) for this long, then it is handed back.
    drain_seconds: float = 0.0
    # Called after each lease renewal: a lane renews its work item's lease with the run's.
    on_renew: Callable[[], None] | None = None
    _next_check: float = field(default=0.0, init=False)
    _next_renew: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        now = time.monotonic()
        self._next_check = now + self.check_every
        # A third of the lease: two renewals can fail before another worker may take over.
        self._next_renew = now + self.lease_seconds / 3

    def poll(self) -> None:
        """Check in when due; raise RunCancelled, LeaseLost, RunTimedOut or HandedBack if the run
        must stop."""
        now = time.monotonic()
        if now >= self.run_deadline:
            raise RunTimedOut()
        if now >= self._next_check:
            self._check_in(now)
        draining_since = shutdown.DRAIN.since()
        if draining_since is not None and now - draining_since >= self.drain_seconds:
            raise HandedBack()

    def _check_in(self, now: float) -> None:
        renew = now >= self._next_renew
        liveness = checkpoints.check_in(
            self.db, self.claim, renew_lease_seconds=self.lease_seconds if renew else None
        )
        self._next_check = now + self.check_every
        if renew:
            self._next_renew = now + self.lease_seconds / 3
        if liveness is None:
            raise LeaseLost()
        if liveness.cancel_requested:
            raise RunCancelled()
        if renew and self.on_renew is not None:
            self.on_renew()

    def sleep(self, seconds: float) -> None:
        """Wait (between retries) while still checking in."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                self.poll()
            except HandedBack as exc:
                # The failed attempt is recorded and the next one not yet counted.
                raise HandedBack(attempt_started=False) from exc
            time.sleep(min(left, self.check_every))

    def supervise(self, attempt: Callable[[], StepResult], ctx: StepContext) -> StepResult:
        """Run one step attempt in a thread until it ends, times out, or the run must stop."""
        done = threading.Event()
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["result"] = attempt()
            except BaseException as exc:  # handed to the run's thread, which decides
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=target, name=f"step-{ctx.step}", daemon=True).start()
        while not done.wait(
            timeout=max(0.0, min(self.check_every, ctx.deadline - time.monotonic()))
        ):
            try:
                self.poll()
            except HandedBack as exc:
                stopped = self._stop(ctx, done)
                raise HandedBack(attempt_started=exc.attempt_started, step_stopped=stopped) from exc
            except Exception:  # interrupted, or Postgres unreachable: the attempt ends either way
                self._stop(ctx, done)
                raise
            if time.monotonic() >= ctx.deadline:
                stopped = self._stop(ctx, done)
                # A step still running after its timeout must not be retried beside itself.
                raise StepFailure(
                    f"step {ctx.step!r} timed out"
                    + ("" if stopped else " and did not stop; not retried"),
                    retryable=stopped,
                    code="STEP_TIMEOUT",
                )
        if "error" in box:
            error = box["error"]
            assert isinstance(error, BaseException)
            if isinstance(error, StepStopped):  # stopped without our asking: treat as a failure
                raise StepFailure(f"step {ctx.step!r} stopped", retryable=True) from error
            raise error
        result = box["result"]
        assert isinstance(result, StepResult)
        return result

    @staticmethod
    def _stop(ctx: StepContext, done: threading.Event) -> bool:
        """Ask the step to stop; True if it did within the grace period."""
        ctx.stop.set()
        if done.wait(STOP_GRACE_SECONDS):
            return True
        log.warning("step_abandoned", step=ctx.step, reason="did not stop within grace")
        return False
