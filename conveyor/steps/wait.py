"""The durable wait kinds, `sleep` and `wait_for_event`: they do not block a worker. Their attempt
renders the config and raises StepSuspended; the engine commits the wait on the run row and the
worker moves on (conveyor/runs/waits.py resumes the run later)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from conveyor.steps.base import StepConfig, StepContext, StepFailure, StepKind, StepResult

# Bounds a timer's reach; a definition asking for more is a typo more often than a plan.
MAX_WAIT_SECONDS = 366 * 24 * 3600
SLEEP = "sleep"
WAIT_FOR_EVENT = "wait_for_event"
APPROVAL = "approval"
# Kinds whose wait counts against no run timeout (waits.execution_seconds reads waited_seconds).
WAIT_KINDS = frozenset({SLEEP, WAIT_FOR_EVENT, APPROVAL, "workflow"})


@dataclass(frozen=True)
class WaitRequest:
    """What a suspended step waits for: a timer (seconds from now, or until a time) and, for
    `wait_for_event`, the event, its match key and what its timeout does; for `approval`, the
    approver and the signed link; for `workflow`, the child run to start (and whether to await
    it: a detached child is started and the step completes at once)."""

    kind: Literal["sleep", "event", "approval", "child"]
    seconds: float | None = None
    until: datetime | None = None
    event: str | None = None
    match: str | None = None
    on_timeout: Literal["fail", "continue"] = "fail"
    approver: str | None = None
    message: str | None = None
    on_reject: Literal["fail", "continue"] = "continue"
    token: str | None = None
    workflow: str | None = None
    inputs: dict[str, Any] | None = None
    detached: bool = False

    def links(self) -> dict[str, str]:
        """An approval's signed approve and reject links (relative to the API's base URL)."""
        link = f"/api/approvals/{self.token}"
        return {"approve": f"{link}?decision=approve", "reject": f"{link}?decision=reject"}

    def describe(self) -> dict[str, Any]:
        """The step row's `wait` column (and the step_waiting event's fields)."""
        if self.kind == "sleep":
            return {"kind": "sleep"}
        if self.kind == "approval":
            # No links: the run's owner reads this, and a link is the approver's credential
            # (they reach the approver as a notification, conveyor/runs/approvals.py).
            return {
                "kind": "approval",
                "approver": self.approver,
                "message": self.message,
                "on_timeout": self.on_timeout,
                "on_reject": self.on_reject,
            }
        if self.kind == "child":
            return {"kind": "child", "workflow": self.workflow}
        return {
            "kind": "event",
            "event": self.event,
            "match": self.match,
            "on_timeout": self.on_timeout,
        }


class StepSuspended(Exception):
    """Raised by a wait kind's attempt: the engine commits `request` and ends the attempt."""

    def __init__(self, request: WaitRequest) -> None:
        super().__init__(request.kind)
        self.request = request


def is_template(value: object) -> bool:
    """A string rendered at run time (checked then, not at definition)."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def parse_time(value: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    moment = datetime.fromisoformat(value)
    try:
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except OverflowError:  # an offset that moves the year past 9999 or before 1
        raise ValueError(f"{value!r} is outside the years datetime can hold in UTC") from None


def checked_duration(value: float | str | None) -> float | str | None:
    """A duration as written in a definition: a template, or seconds within bounds."""
    if value is None or is_template(value):
        return value
    seconds = float(value)
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError(f"must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return seconds


class SleepConfig(StepConfig):
    """`sleep` step configuration: exactly one of `seconds` or `until` (ISO 8601, UTC if it has
    no offset); either may be a template."""

    seconds: float | str | None = Field(default=None, description="How long to wait.")
    until: str | None = Field(default=None, description="When to wake up (ISO 8601).")

    _seconds = field_validator("seconds")(lambda value: checked_duration(value))

    @field_validator("until")
    @classmethod
    def _until(cls, value: str | None) -> str | None:
        if value is not None and not is_template(value):
            parse_time(value)  # ValueError names the problem
        return value

    @model_validator(mode="after")
    def _one_of(self) -> SleepConfig:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("give exactly one of `seconds` or `until`")
        return self


class WaitForEventConfig(StepConfig):
    """`wait_for_event` configuration: the event name signals use, an optional match key a
    signal must carry, and what happens when no signal came within `timeout_seconds`."""

    event: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
    # A whole-expression template keeps its type: an integer id is a key too (compared as text).
    match: str | int | None = Field(default=None)
    timeout_seconds: float | str | None = Field(
        default=None, description="No timeout when absent: the run waits until signalled."
    )
    on_timeout: Literal["fail", "continue"] = "fail"

    _timeout = field_validator("timeout_seconds")(lambda value: checked_duration(value))


def run_sleep(ctx: StepContext, config: SleepConfig) -> StepResult:
    """Suspend until the time comes; a time already past completes at once."""
    if config.until is not None:
        try:
            until = parse_time(str(config.until))
        except ValueError as exc:
            raise StepFailure(
                f"`until` is not an ISO 8601 time: {config.until!r}",
                retryable=False,
                code="INVALID_STEP_CONFIG",
            ) from exc
        now = datetime.now(UTC)
        if until <= now:
            return StepResult({"wake_at": until.isoformat(), "resumed_at": now.isoformat()})
        if (until - now).total_seconds() > MAX_WAIT_SECONDS:
            raise StepFailure(
                f"`until` {config.until!r} is more than {MAX_WAIT_SECONDS / 86400:g} days away",
                retryable=False,
                code="INVALID_STEP_CONFIG",
            )
        raise StepSuspended(WaitRequest("sleep", until=until))
    seconds = _number(config.seconds, "seconds")
    if seconds == 0:
        now = datetime.now(UTC)
        return StepResult({"wake_at": now.isoformat(), "resumed_at": now.isoformat()})
    raise StepSuspended(WaitRequest("sleep", seconds=seconds))


def run_wait_for_event(ctx: StepContext, config: WaitForEventConfig) -> StepResult:
    """Suspend until a signal for the event (or the timeout) resumes the run."""
    timeout = None if config.timeout_seconds is None else _number(config.timeout_seconds, "timeout")
    match = None if config.match is None else str(config.match).strip()
    if match is not None and not 1 <= len(match) <= 500:
        raise StepFailure(
            "`match` must render to 1 to 500 characters (spaces around it are dropped, as from "
            "a signal's match)",
            retryable=False,
            code="INVALID_STEP_CONFIG",
        )
    raise StepSuspended(
        WaitRequest(
            "event",
            seconds=timeout,
            event=config.event,
            match=match,
            on_timeout=config.on_timeout,
        )
    )


def _number(value: float | str | None, what: str) -> float:
    """A rendered duration as seconds, within bounds."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise StepFailure(
            f"`{what}` must be a number of seconds between 0 and {MAX_WAIT_SECONDS}, got {value!r}",
            retryable=False,
            code="INVALID_STEP_CONFIG",
        )
    return seconds


SLEEP_KIND = StepKind(SLEEP, SleepConfig, run_sleep, inline=True)
WAIT_FOR_EVENT_KIND = StepKind(WAIT_FOR_EVENT, WaitForEventConfig, run_wait_for_event, inline=True)
