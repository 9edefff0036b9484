"""The `approval` step: a durable wait for one named user's approve/reject decision, with an
expiry. Its attempt signs a single-use link and raises StepSuspended; conveyor/runs/approvals.py
takes the decision and resumes the run."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, field_validator

from conveyor.steps.base import StepConfig, StepContext, StepFailure, StepKind, StepResult
from conveyor.steps.wait import APPROVAL, StepSuspended, WaitRequest, checked_duration

# Domain separation: the link key is derived from the API secret, so a link is never a valid
# signature of anything else signed with that secret (API tokens), nor the other way round.
LINK_KEY_LABEL = b"conveyor approval link v1"


class ApprovalConfig(StepConfig):
    """`approval` configuration: who decides (a user id; a template is rendered at run time),
    how long the link is valid, what the approver reads, and what a timeout or a rejection do."""

    approver: str = Field(min_length=1, max_length=200)
    expires_in_seconds: float | str = Field(description="How long the approver has to decide.")
    message: str | None = Field(default=None, max_length=2000)
    on_timeout: Literal["fail", "continue"] = "fail"
    # `continue`: the output says `rejected` and the run goes on (a later step can branch on it).
    on_reject: Literal["fail", "continue"] = "continue"

    _expires = field_validator("expires_in_seconds")(lambda value: checked_duration(value))


@dataclass(frozen=True)
class ApprovalClaims:
    """What a link names: the run, its approval step, the approver and when the link expires."""

    run_id: UUID
    step: str
    approver: UUID
    expires_at: datetime


def link_key(secret: str) -> bytes:
    """The HMAC key for approval links, derived from the server's API secret."""
    return hmac.new(secret.encode(), LINK_KEY_LABEL, hashlib.sha256).digest()


def sign_link(secret: str, claims: ApprovalClaims) -> str:
    """A URL-safe token: the claims as JSON and their HMAC-SHA256, both base64url."""
    body = json.dumps(
        {
            "r": str(claims.run_id),
            "s": claims.step,
            "a": str(claims.approver),
            "e": int(claims.expires_at.timestamp()),
        },
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(link_key(secret), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify_link(secret: str, token: str) -> ApprovalClaims | None:
    """The claims of a token this server signed; None for anything else (tampered, malformed)."""
    body_part, _, mac_part = token.partition(".")
    try:
        body = _unb64(body_part)
        mac = _unb64(mac_part)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac, hmac.new(link_key(secret), body, hashlib.sha256).digest()):
        return None
    try:
        data: dict[str, Any] = json.loads(body)
        return ApprovalClaims(
            run_id=UUID(data["r"]),
            step=str(data["s"]),
            approver=UUID(data["a"]),
            expires_at=datetime.fromtimestamp(int(data["e"]), UTC),
        )
    except (ValueError, KeyError, TypeError):
        return None  # signed by us, so only a format change could get here


def run_approval(ctx: StepContext, config: ApprovalConfig) -> StepResult:
    """Sign the link and suspend until the approver decides or the link expires."""
    try:
        approver = UUID(str(config.approver).strip())
    except ValueError:
        raise StepFailure(
            f"`approver` must render to a user id, got {config.approver!r}",
            retryable=False,
            code="INVALID_STEP_CONFIG",
        ) from None
    try:
        seconds = float(checked_duration(config.expires_in_seconds))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StepFailure(
            f"`expires_in_seconds` must render to a number of seconds within bounds, "
            f"got {config.expires_in_seconds!r}",
            retryable=False,
            code="INVALID_STEP_CONFIG",
        ) from None
    # Whole seconds: the link carries the expiry, and the run's wake_at is the same instant.
    expires_at = datetime.fromtimestamp(math.ceil(datetime.now(UTC).timestamp() + seconds), UTC)
    claims = ApprovalClaims(ctx.run_id, ctx.step, approver, expires_at)
    raise StepSuspended(
        WaitRequest(
            "approval",
            until=expires_at,
            on_timeout=config.on_timeout,
            approver=str(approver),
            message=config.message,
            on_reject=config.on_reject,
            token=sign_link(ctx.settings.api_secret(), claims),
        )
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text:
        raise ValueError("empty")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


APPROVAL_KIND = StepKind(APPROVAL, ApprovalConfig, run_approval, inline=True)
