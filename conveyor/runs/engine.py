"""Run a claimed workflow step by step: skip what is checkpointed, retry what may succeed, stop
when asked, and say how it ended."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from conveyor import metrics, steps
from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.events.run_events import EventPublisher
from conveyor.ledger.reservations import HoldKey
from conveyor.runs import artifacts, checkpoints, credit_holds, credit_waits, fanout, waits
from conveyor.runs.children import ChildNotStarted
from conveyor.runs.fingerprints import step_fingerprint
from conveyor.runs.step_events import emit_step_event
from conveyor.runs.step_rows import CompletedStep
from conveyor.runs.store import ClaimedRun, Outcome
from conveyor.runs.stored_outputs import StoredOutputs
from conveyor.runs.supervision import LeaseLost, RunInterrupted, RunTimedOut, Watch
from conveyor.settings import Settings
from conveyor.steps import StepContext, StepDeferred, StepFailure, StepResult, StepSuspended
from conveyor.steps.map import MAP, PARALLEL_KINDS, items_of
from conveyor.workflows import templates
from conveyor.workflows.definitions import StepSpec, Workflow

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class Engine:
    """One execution attempt of one claimed run."""

    db: Database
    publisher: EventPublisher
    settings: Settings
    store: artifacts.ArtifactStore
    claim: ClaimedRun
    workflow: Workflow

    def __post_init__(self) -> None:
        self.outputs = StoredOutputs(self.store, self.settings, self.claim)

    def run(self) -> Outcome:
        """Execute the remaining steps. Raises RunCancelled or LeaseLost when the run must stop,
        RunSuspended when it waits, RunFannedOut when lanes take its work over."""
        watch = self.watch()
        if [state.name for state in self.claim.steps] != [
            spec.name for spec in self.workflow.steps
        ]:
            return Outcome(
                error=f"the definition of {self.workflow.name!r} changed while this run was in "
                "flight (its steps differ); submit it again",
                error_code="DEFINITION_CHANGED",
            )
        context = self.context(watch)
        outputs: dict[str, Any] = context["steps"]
        plan = self.workflow.steps
        # The step the claim started (its attempt counted): the first one not completed; none
        # when a resumer completed the last step (a wait, an approval, a child).
        started = next((s.position for s in self.claim.steps if s.status != "completed"), -1)
        parallel = fanout.may_fan_out(self.workflow)
        # Steps whose items lanes ran (read once: items are written only by a dispatch, which
        # ends this attempt).
        with_items: set[int] = set()
        if parallel:
            state = fanout.after_lanes(
                self.db, self.claim, self.workflow, started, self.settings.run_lease_seconds
            )
            with_items = state.positions
            failed = state.run_failure(plan)
            if failed is not None:
                return Outcome(
                    error=failed.error,
                    error_code=failed.error_code,
                    failed_position=failed.position,
                )
        last_step: CompletedStep | None = None
        while True:
            ready = [
                (position, spec)
                for position, spec in enumerate(plan)
                if spec.name not in outputs
                and all(need in outputs for need in self.workflow.needs(spec.name))
            ]
            if not ready:
                break
            position, spec = ready[0]
            if parallel:
                branches = [(p, s) for p, s in ready if s.kind in PARALLEL_KINDS]
                if len(branches) >= 2 and branches[0][0] == position:
                    fanout.dispatch_branches(
                        self.db,
                        self.publisher,
                        self.claim,
                        branches,
                        lease_seconds=self.settings.run_lease_seconds,
                    )
            try:
                if spec.kind == MAP:
                    result = self._map(watch, position, spec, context, position in with_items)
                else:
                    attempt = self.claim.steps[position].attempt if position == started else 1
                    result = self.run_step(watch, position, spec, attempt, context)
            except StepFailure as failure:
                return self._failed(position, spec, failure)
            except RunTimedOut:
                return Outcome(
                    error=f"the run exceeded its {self.workflow.timeout_seconds:g} s timeout "
                    f"during step {spec.name!r}",
                    error_code="RUN_TIMEOUT",
                    failed_position=position,
                )
            except StepDeferred as deferred:
                # Credits or a rate limit: parked, the attempt given back; the step runs again.
                credit_waits.defer(self.db, self.publisher, self.claim, position, deferred)
            except StepSuspended as suspended:
                # A durable wait: committed on the run row, and this attempt ends (RunSuspended).
                try:
                    waits.suspend(
                        self.db,
                        self.publisher,
                        self.claim,
                        position,
                        suspended.request,
                        step_fingerprint(spec),
                    )
                except ChildNotStarted as exc:  # an unknown child workflow, inputs it refuses
                    refused = StepFailure(exc.message, retryable=False, code=exc.code)
                    return self._failed(position, spec, refused)
            outputs[spec.name] = {"output": result.output}
            last_step = self._checkpoint(watch, position, spec, result, plan, outputs)
            started = -1
        return self._completed(watch, context, outputs, last_step)

    def watch(self) -> Watch:
        """The watch over this claim: lease renewal, cancel, the run's deadline (waits excluded)."""
        elapsed = waits.execution_seconds(self.db, self.claim, self.workflow)
        return Watch(
            self.db,
            self.claim,
            lease_seconds=self.settings.run_lease_seconds,
            check_every=self.settings.cancel_check_seconds,
            run_deadline=time.monotonic() + self.workflow.timeout_seconds - elapsed,
            drain_seconds=self.settings.worker_drain_seconds,
        )

    def context(self, watch: Watch) -> dict[str, Any]:
        """What templates see: the inputs, each completed step's output, the run's facts."""
        inputs = self.workflow.validate_input(self.claim.input).model_dump(mode="json")
        outputs = {
            state.name: {"output": self.outputs.load(watch, state.output, state.output_url)}
            for state in self.claim.steps
            if state.status == "completed"
        }
        return {"inputs": inputs, "steps": outputs, "run": self._run_facts()}

    def _map(  # noqa: RET503 (dispatch_map raises RunFannedOut)
        self,
        watch: Watch,
        position: int,
        spec: StepSpec,
        context: dict[str, Any],
        dispatched: bool,
    ) -> StepResult:
        """A map reached for the first time fans out; once its items are done (`dispatched`),
        its output."""
        if dispatched:
            watch.poll()  # a collected map whose items ran out of time fails with the run
            return StepResult(
                fanout.map_output(
                    self.db,
                    self.claim,
                    position,
                    spec,
                    lambda stub, url: self.outputs.load(watch, stub, url),
                )
            )
        try:
            over = templates.render(spec.config["over"], context)
        except templates.TemplateFailure as exc:
            raise StepFailure(str(exc), retryable=False, code="TEMPLATE_ERROR") from exc
        items = items_of(over)
        if not items:
            return StepResult({"items": [], "failed": []})
        fanout.dispatch_map(
            self.db,
            self.publisher,
            self.claim,
            position,
            spec,
            items,
            lease_seconds=self.settings.run_lease_seconds,
        )

    def _run_facts(self) -> dict[str, Any]:
        return {"id": str(self.claim.id), "attempt": self.claim.attempt}

    def run_step(
        self, watch: Watch, position: int, spec: StepSpec, attempt: int, context: dict[str, Any]
    ) -> StepResult:
        """Attempts of one step until one succeeds or the failure is final."""
        if attempt > spec.retry.max_attempts:
            # Earlier attempts ended with their worker (killed, out of memory): do not loop forever.
            raise StepFailure(
                f"step {spec.name!r} was interrupted {attempt - 1} time(s) without finishing; "
                f"its limit is {spec.retry.max_attempts} attempt(s)",
                retryable=False,
                code="STEP_ATTEMPTS_EXHAUSTED",
            )
        while True:
            watch.poll()
            try:
                return self.attempt(watch, spec, attempt, context, position=position)
            except StepFailure as failure:
                if not failure.retryable or attempt >= spec.retry.max_attempts:
                    failure.message = (
                        f"step {spec.name!r} failed after {attempt} attempt(s): {failure.message}"
                    )
                    raise
                delay = spec.retry.delay(attempt, failure.retry_after)
                log.info("step_retrying", step=spec.name, attempt=attempt, delay=round(delay, 3))
                event = checkpoints.record_retry(
                    self.db,
                    self.claim,
                    position=position,
                    error=failure.message,
                    error_code=failure.code,
                    retry_in=delay,
                    lease_seconds=self.settings.run_lease_seconds,
                )
                if event is None:
                    raise LeaseLost() from failure
                self.publisher.publish(event)
                watch.sleep(delay)
                # Counted only now, so a worker lost during the backoff does not use an attempt.
                if not checkpoints.start_attempt(self.db, self.claim, position=position):
                    raise LeaseLost() from failure
                attempt += 1

    def attempt(
        self,
        watch: Watch,
        spec: StepSpec,
        attempt: int,
        context: dict[str, Any],
        label: str | None = None,
        *,
        position: int | None = None,
        item: int | None = None,
    ) -> StepResult:
        """One attempt of spec (label: a map item's name, `step[3]`, in logs and requests; a lane's
        attempt has one). position (and a map item's item) key its credit reservation."""
        kind = steps.KINDS[spec.kind]
        try:
            config = kind.config_model.model_validate(templates.render(spec.config, context))
        except templates.TemplateFailure as exc:
            raise StepFailure(str(exc), retryable=False, code="TEMPLATE_ERROR") from exc
        except ValidationError as exc:
            raise StepFailure(
                f"rendered config is invalid: {exc}", retryable=False, code="INVALID_STEP_CONFIG"
            ) from exc
        ctx = StepContext(
            run_id=self.claim.id,
            user_id=self.claim.user_id,
            step=label or spec.name,
            attempt=attempt,
            settings=self.settings,
            deadline=min(time.monotonic() + spec.timeout_seconds, watch.run_deadline),
            emit=lambda event, data: emit_step_event(
                self.db, self.publisher, self.claim, event, data
            ),
        )
        # The hold this attempt made, if it made one: only then is there anything to give back.
        held: list[HoldKey] = []
        if position is not None:
            key = HoldKey(self.claim.id, self.claim.attempt, position, item, attempt)

            def reserve(estimate: steps.CallEstimate) -> None:
                credit_holds.reserve_or_defer(
                    self.db, self.settings, self.claim.user_id, key, estimate
                )
                held.append(key)

            ctx.reserve = reserve
        started = time.monotonic()
        outcome = "failed"
        try:
            result = (
                kind.run(ctx, config)
                if kind.inline
                else watch.supervise(lambda: kind.run(ctx, config), ctx)
            )
            outcome = "completed"
            return result
        except StepSuspended:
            outcome = "waiting"
            raise
        except StepDeferred as deferred:
            outcome = "waiting"
            if label is None:
                raise
            raise credit_holds.lane_refusal(deferred) from deferred
        except (StepFailure, RunInterrupted, ServiceUnavailable):
            raise
        except Exception as exc:
            # A step's own exception: worth another attempt under its retry policy.
            log.warning("step_raised", step=spec.name, error=repr(exc))
            raise StepFailure(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        finally:
            metrics.STEP_DURATION.labels(spec.kind, outcome).observe(time.monotonic() - started)
            if outcome != "completed" and held:
                # Failed, retried or interrupted: its hold is given back at once (a completed
                # step's is settled by its checkpoint).
                credit_holds.release_quietly(self.db, held[0])

    def _checkpoint(
        self,
        watch: Watch,
        position: int,
        spec: StepSpec,
        result: StepResult,
        plan: list[StepSpec],
        outputs: dict[str, Any],
    ) -> CompletedStep | None:
        """Commit a finished step and start the next one not completed (branches after it may
        be); the last one is returned for finish_run."""
        stored, url = self.outputs.offload(watch, spec.name, result.output)
        step = CompletedStep(position, stored, url, result.usage, step_fingerprint(spec))
        following = next(
            (p for p in range(position + 1, len(plan)) if plan[p].name not in outputs), len(plan)
        )
        if following == len(plan):
            return step
        events = checkpoints.complete_step(
            self.db,
            self.claim,
            step,
            next_step=(following, plan[following].name),
            progress=round(following / len(plan), 4),
            lease_seconds=self.settings.run_lease_seconds,
        )
        if events is None:
            raise LeaseLost()
        self.publisher.publish(*events)
        return None

    def _failed(self, position: int, spec: StepSpec, failure: StepFailure) -> Outcome:
        code = failure.code
        if self.workflow.kind == "agent" and code == "STEP_FAILED":
            code = "AGENT_FAILED"
        return Outcome(error=failure.message, error_code=code, failed_position=position)

    def _completed(
        self,
        watch: Watch,
        context: dict[str, Any],
        outputs: dict[str, Any],
        last_step: CompletedStep | None,
    ) -> Outcome:
        if self.workflow.output is None:
            output = outputs[self.workflow.steps[-1].name]["output"]
        else:
            try:
                output = templates.render(self.workflow.output, context)
            except templates.TemplateFailure as exc:
                return Outcome(
                    error=f"workflow output: {exc}",
                    error_code="TEMPLATE_ERROR",
                    last_step=last_step,
                )
        if self.workflow.output is None and last_step is not None:
            # The run's output is its last step's, stored once (an upload fewer when it is large).
            stored, url = last_step.output, last_step.output_url
        else:
            stored, url = self.outputs.offload(watch, "output", output)
        return Outcome(output=stored, output_url=url, reply=reply_text(output), last_step=last_step)


def reply_text(output: Any) -> str:
    """What a run says in its session: the `text` of an LLM reply, else the output as JSON."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return str(output["text"])
    return json.dumps(output)
