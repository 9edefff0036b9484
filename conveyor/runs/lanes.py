"""Lanes: the Celery task `runs.execute_lane` runs one of a run's branches, or a map's items one
after another, on whatever worker takes it; several lanes run at once on several workers. The
coordinator dispatched them (conveyor/runs/fanout.py); the lane that ends the run's last item
queues the run for its coordinator again (conveyor/runs/work_items.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError

from conveyor import runs, workflows
from conveyor.db import Database
from conveyor.errors import ConveyorError
from conveyor.events.run_events import EventPublisher
from conveyor.runs import artifacts, item_children, work_items
from conveyor.runs.engine import Engine
from conveyor.runs.fingerprints import step_fingerprint
from conveyor.runs.item_children import ChildItemStarted
from conveyor.runs.store import ClaimedRun, Outcome
from conveyor.runs.supervision import HandedBack, LeaseLost, RunCancelled, RunTimedOut
from conveyor.runs.work_items import ItemEnd, TakenItem
from conveyor.settings import Settings
from conveyor.steps import StepFailure, StepResult
from conveyor.steps.child import ChildConfig
from conveyor.steps.map import CHILD_ITEM, MAP, MapConfig
from conveyor.workflows import RetryPolicy, StepSpec, templates

log = structlog.get_logger(__name__)

# A map's progress event at most this often per lane: 10,000 items are not 10,000 events.
PROGRESS_EVERY_SECONDS = 1.0


class LaneResult(StrEnum):
    """How a lane ended."""

    DONE = "done"  # no item left for it; other lanes are finishing theirs
    RESUMED = "resumed"  # it ended the run's last item: the run is queued for its coordinator
    SKIPPED = "skipped"  # the run is no longer this lane's attempt (finished, taken over)
    LEASE_LOST = "lease_lost"
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"  # the worker is stopping: publish this lane again
    LEFT_TO_LEASE = "left_to_lease"  # stopping, but its step would not stop: not published again


def execute_lane(
    db: Database,
    publisher: EventPublisher,
    settings: Settings,
    run_id: UUID,
    attempt: int,
    position: int,
    *,
    store: artifacts.ArtifactStore | None = None,
    wake_runs: Callable[[Sequence[UUID]], None] | None = None,
) -> LaneResult:
    """Take the step's items one by one until none is left; the run goes back to its coordinator
    when the last one ends. A duplicate or stale lane is a no-op (SKIPPED)."""
    claim = work_items.load_claim(db, run_id, attempt)
    if claim is None:
        return LaneResult.SKIPPED
    structlog.contextvars.bind_contextvars(run_id=str(run_id), attempt=attempt, lane=position)
    try:
        workflow = workflows.get(claim.workflow_id)
    except ConveyorError:
        return LaneResult.SKIPPED  # its coordinator ends the run with the same error
    names = [state.name for state in claim.steps]
    if names != [spec.name for spec in workflow.steps]:
        return LaneResult.SKIPPED  # the definition changed: the coordinator says so, runs nothing
    engine = Engine(
        db, publisher, settings, store or artifacts.store_for(settings), claim, workflow
    )
    lane = _Lane(engine, claim, workflow.steps[position], position)
    return lane.run(wake_runs)


class _Lane:
    """One lane's loop over its step's items."""

    def __init__(self, engine: Engine, claim: ClaimedRun, spec: StepSpec, position: int) -> None:
        self.engine = engine
        self.claim = claim
        self.spec = spec
        self.position = position
        self.lease = engine.settings.run_lease_seconds
        self.taken: TakenItem | None = None
        self.watch = engine.watch()
        self.watch.on_renew = self._renew_item
        self.is_map = spec.kind == MAP
        self.fail_fast = True
        self.item_spec = spec
        if self.is_map:
            config = MapConfig.model_validate(spec.config)
            self.fail_fast = config.on_failure == "fail_fast"
            self.item_spec = StepSpec(
                name=spec.name,
                kind=config.step.kind,
                config=config.step.config,
                retry=RetryPolicy(**config.step.retry.model_dump()),
                timeout_seconds=config.step.timeout_seconds,
            )
        self._last_progress = 0.0

    def _renew_item(self) -> None:
        if self.taken is not None:
            work_items.renew(self.engine.db, self.claim, self.taken, lease_seconds=self.lease)

    def run(self, wake_runs: Callable[[Sequence[UUID]], None] | None) -> LaneResult:
        db = self.engine.db
        try:
            context = self.engine.context(self.watch)
        except LeaseLost:
            return LaneResult.LEASE_LOST
        taken = work_items.take(
            db, self.claim, self.position, branch=not self.is_map, lease_seconds=self.lease
        )
        while True:
            self.taken = taken
            if taken is None:
                # No item left for this lane; if that is because a cancel was asked for, the
                # items nobody took end here, and the lane that leaves none running ends the run.
                if work_items.settle_cancel(db, self.claim):
                    return self._finish_cancelled()
                return LaneResult.DONE
            child: ChildItemStarted | None = None
            try:
                if self.item_spec.kind == CHILD_ITEM:
                    started = self._checked_start_child(taken, context)
                    child = started if isinstance(started, ChildItemStarted) else None
                    end = started if isinstance(started, ItemEnd) else ItemEnd()
                else:
                    end = self._run_item(taken, context)
            except RunCancelled:
                return self._cancelled(taken)
            except LeaseLost:
                return LaneResult.LEASE_LOST
            except HandedBack as exc:
                if not exc.step_stopped:
                    # Its thread may still be running: the item stays taken until its lease runs
                    # out (then another lane or the reaper's coordinator takes it), never beside it.
                    return LaneResult.LEFT_TO_LEASE
                work_items.give_back(db, self.claim, taken, uncount=exc.attempt_started)
                return LaneResult.HANDED_BACK
            if child is not None:  # the item waits for its child run; the lane goes on
                if child.cancelled:
                    return self._cancelled(taken)
                self._publish_child(child, wake_runs)
                if child.lost or child.resume:
                    return LaneResult.LEASE_LOST if child.lost else LaneResult.RESUMED
                taken = work_items.take(
                    db, self.claim, self.position, branch=False, lease_seconds=self.lease
                )
                continue
            now = time.monotonic()
            progress = now - self._last_progress >= PROGRESS_EVERY_SECONDS
            recorded = work_items.record_end(
                db,
                self.claim,
                taken,
                end,
                # Out of time is no failure to collect: the run has ended.
                fail_fast=self.fail_fast or end.error_code == "RUN_TIMEOUT",
                progress=progress,
                lease_seconds=self.lease,
                take_next=self.is_map,
            )
            if progress:
                self._last_progress = now
            self.engine.publisher.publish(*recorded.events)
            if recorded.lost:
                return LaneResult.LEASE_LOST
            if recorded.cancelled:
                return self._finish_cancelled()
            if recorded.resume:
                if wake_runs is not None:
                    wake_runs([self.claim.id])
                return LaneResult.RESUMED
            taken = recorded.next

    def _checked_start_child(
        self, taken: TakenItem, context: dict[str, Any]
    ) -> ItemEnd | ChildItemStarted:
        """_start_child after checking in (the lease, a cancel, a drain, the run's deadline)."""
        try:
            self.watch.poll()
        except RunTimedOut:
            return ItemEnd(
                error=f"the run exceeded its timeout during step {self.spec.name!r}",
                error_code="RUN_TIMEOUT",
            )
        return self._start_child(taken, context)

    def _start_child(self, taken: TakenItem, context: dict[str, Any]) -> ItemEnd | ChildItemStarted:
        """Start the item's child run, the item waiting for it; an ItemEnd (failed) when its
        config does not render or its workflow or inputs are refused."""
        item_context = {**context, "item": taken.input, "index": taken.item}
        try:
            rendered = templates.render(self.item_spec.config, item_context)
            config = ChildConfig.model_validate(rendered)
            definition = item_children.child_definition(config.workflow, config.inputs)
        except templates.TemplateFailure as exc:
            return ItemEnd(error=str(exc), error_code="TEMPLATE_ERROR")
        except ValidationError as exc:
            return ItemEnd(
                error=f"rendered config is invalid: {exc}", error_code="INVALID_STEP_CONFIG"
            )
        except ConveyorError as exc:
            return ItemEnd(
                error=f"child workflow not started: {exc.message}",
                error_code="CHILD_WORKFLOW_INVALID",
            )
        held = item_children.RunHeld(self.claim.id, self.claim.user_id, self.claim.attempt)
        return item_children.start_child_item(
            self.engine.db,
            held,
            self.position,
            taken.item,
            taken.attempt,
            definition,
            config.inputs,
        )

    def _publish_child(
        self, started: ChildItemStarted, wake_runs: Callable[[Sequence[UUID]], None] | None
    ) -> None:
        """After commit: the events, the new child run, and the run itself when it was queued."""
        self.engine.publisher.publish(*started.events)
        runnable = [started.child] if started.child is not None else []
        if started.resume:
            runnable.append(self.claim.id)
        if runnable and wake_runs is not None:
            wake_runs(runnable)

    def _run_item(self, taken: TakenItem, context: dict[str, Any]) -> ItemEnd:
        """Run the branch step or the map item to its end (retries included)."""
        try:
            # The attempt is in the stored output's key, so a lane whose item was taken over
            # cannot overwrite its successor's object (the claim's attempt is the same).
            if taken.step_attempt is not None:
                result = self.engine.run_step(
                    self.watch, self.position, self.spec, taken.step_attempt, context
                )
                name = f"{self.spec.name}.a{taken.attempt}"
            else:
                result = self._map_item(taken, context)
                name = f"{self.spec.name}.{taken.item}.a{taken.attempt}"
        except StepFailure as failure:
            return ItemEnd(error=failure.message, error_code=failure.code)
        except RunTimedOut:
            return ItemEnd(
                error=f"the run exceeded its timeout during step {self.spec.name!r}",
                error_code="RUN_TIMEOUT",
            )
        stored, url = self.engine.outputs.offload(self.watch, name, result.output)
        return ItemEnd(stored, url, result.usage, spec_hash=step_fingerprint(self.spec))

    def _map_item(self, taken: TakenItem, context: dict[str, Any]) -> StepResult:
        """Attempts of one map item, each counted on its row, until one succeeds or it fails."""
        retry = self.item_spec.retry
        label = f"{self.spec.name}[{taken.item}]"
        if taken.attempt > retry.max_attempts:
            raise StepFailure(
                f"item {taken.item} was interrupted {taken.attempt - 1} time(s) without "
                f"finishing; its limit is {retry.max_attempts} attempt(s)",
                retryable=False,
                code="STEP_ATTEMPTS_EXHAUSTED",
            )
        item_context = {**context, "item": taken.input, "index": taken.item}
        while True:
            self.watch.poll()
            try:
                return self.engine.attempt(
                    self.watch,
                    self.item_spec,
                    taken.attempt,
                    item_context,
                    label=label,
                    position=taken.position,
                    item=None if taken.step_attempt is not None else taken.item,
                )
            except StepFailure as failure:
                if not failure.retryable or taken.attempt >= retry.max_attempts:
                    failure.message = (
                        f"item {taken.item} failed after {taken.attempt} attempt(s): "
                        f"{failure.message}"
                    )
                    raise
                self.watch.sleep(retry.delay(taken.attempt, failure.retry_after))
                if not work_items.count_attempt(self.engine.db, self.claim, taken):
                    raise LeaseLost() from failure

    def _cancelled(self, taken: TakenItem) -> LaneResult:
        if work_items.stop_for_cancel(self.engine.db, self.claim, taken):
            return self._finish_cancelled()
        return LaneResult.CANCELLED

    def _finish_cancelled(self) -> LaneResult:
        """No item is left running: record the cancel the run was asked for (finish_run does,
        since the request is on the row)."""
        finished = runs.finish_run(self.engine.db, self.claim, Outcome())
        if finished is None:
            return LaneResult.LEASE_LOST
        self.engine.publisher.publish(*finished)
        log.info("run_cancelled_by_lane")
        return LaneResult.CANCELLED
