"""Run a claimed workflow step by step: skip what is checkpointed, retry what may succeed, stop
when asked, and say how it ended."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from conveyor import artifacts, checkpoints, metrics, steps, templates
from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.events import EventPublisher
from conveyor.runs import ClaimedRun, Outcome
from conveyor.settings import Settings
from conveyor.step_rows import CompletedStep
from conveyor.steps import StepContext, StepFailure, StepResult
from conveyor.supervision import LeaseLost, RunInterrupted, RunTimedOut, Watch
from conveyor.workflows import StepSpec, Workflow

log = structlog.get_logger(__name__)


@dataclass
class Engine:
    """One execution attempt of one claimed run."""

    db: Database
    publisher: EventPublisher
    settings: Settings
    store: artifacts.ArtifactStore
    claim: ClaimedRun
    workflow: Workflow

    def run(self) -> Outcome:
        """Execute the remaining steps. Raises RunCancelled or LeaseLost when the run must stop."""
        inputs = self.workflow.validate_input(self.claim.input).model_dump(mode="json")
        elapsed = (datetime.now(UTC) - self.claim.started_at).total_seconds()
        watch = Watch(
            self.db,
            self.claim,
            lease_seconds=self.settings.run_lease_seconds,
            check_every=self.settings.cancel_check_seconds,
            run_deadline=time.monotonic() + self.workflow.timeout_seconds - elapsed,
            drain_seconds=self.settings.worker_drain_seconds,
        )
        stored = {state.name: state for state in self.claim.steps}
        if [state.name for state in self.claim.steps] != [
            spec.name for spec in self.workflow.steps
        ]:
            return Outcome(
                error=f"the definition of {self.workflow.name!r} changed while this run was in "
                "flight (its steps differ); submit it again",
                error_code="DEFINITION_CHANGED",
            )
        outputs = {
            state.name: {"output": artifacts.load(self.store, state.output, state.output_url)}
            for state in self.claim.steps
            if state.status == "completed"
        }
        context: dict[str, Any] = {"inputs": inputs, "steps": outputs, "run": self._run_facts()}
        plan = self.workflow.steps
        last_step: CompletedStep | None = None
        for position, spec in enumerate(plan):
            if spec.name in outputs:
                continue
            try:
                result = self._run_step(watch, position, spec, stored[spec.name].attempt, context)
            except StepFailure as failure:
                return self._failed(position, spec, failure)
            except RunTimedOut:
                return Outcome(
                    error=f"the run exceeded its {self.workflow.timeout_seconds:g} s timeout "
                    f"during step {spec.name!r}",
                    error_code="RUN_TIMEOUT",
                    failed_position=position,
                )
            outputs[spec.name] = {"output": result.output}
            last_step = self._checkpoint(position, spec, result, plan)
        return self._completed(context, outputs, last_step)

    def _run_facts(self) -> dict[str, Any]:
        return {"id": str(self.claim.id), "attempt": self.claim.attempt}

    def _run_step(
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
                return self._attempt(watch, spec, attempt, context)
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

    def _attempt(
        self, watch: Watch, spec: StepSpec, attempt: int, context: dict[str, Any]
    ) -> StepResult:
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
            step=spec.name,
            attempt=attempt,
            settings=self.settings,
            deadline=min(time.monotonic() + spec.timeout_seconds, watch.run_deadline),
        )
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
        except (StepFailure, RunInterrupted, ServiceUnavailable):
            raise
        except Exception as exc:
            # A step's own exception: worth another attempt under its retry policy.
            log.warning("step_raised", step=spec.name, error=repr(exc))
            raise StepFailure(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        finally:
            metrics.STEP_DURATION.labels(spec.kind, outcome).observe(time.monotonic() - started)

    def _checkpoint(
        self, position: int, spec: StepSpec, result: StepResult, plan: list[StepSpec]
    ) -> CompletedStep | None:
        """Commit a finished step and start the next; the last one is returned for finish_run."""
        stored, url = artifacts.offload(
            self.store,
            f"{self.claim.id}/{self.claim.attempt}/{spec.name}.json",
            result.output,
            limit=self.settings.output_inline_max_bytes,
        )
        step = CompletedStep(position, stored, url, result.usage)
        following = position + 1
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
        self, context: dict[str, Any], outputs: dict[str, Any], last_step: CompletedStep | None
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
        stored, url = artifacts.offload(
            self.store,
            f"{self.claim.id}/{self.claim.attempt}/output.json",
            output,
            limit=self.settings.output_inline_max_bytes,
        )
        return Outcome(output=stored, output_url=url, reply=reply_text(output), last_step=last_step)


def reply_text(output: Any) -> str:
    """What a run says in its session: the `text` of an LLM reply, else the output as JSON."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return str(output["text"])
    return json.dumps(output)
