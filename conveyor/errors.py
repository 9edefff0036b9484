"""One exception hierarchy: each error carries an HTTP status and a stable machine-readable code."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError


class ConveyorError(Exception):
    """Something went wrong in Conveyor."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self, message: str | None = None, *, retry_after: int | None = None, **details: Any
    ) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        # Seconds after which trying again can succeed; sent as the Retry-After header.
        self.retry_after = retry_after
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body a client sees."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(ConveyorError):
    """The request could not be understood."""

    status = 400
    code = "BAD_REQUEST"


class InvalidJSON(BadRequest):
    """The request body is not valid JSON."""

    code = "INVALID_JSON"


class InvalidContentType(BadRequest):
    """Send the body as JSON with `Content-Type: application/json`."""

    code = "INVALID_CONTENT_TYPE"


class InvalidInput(BadRequest):
    """The request body does not match the expected shape."""

    code = "INVALID_INPUT"

    @classmethod
    def from_validation(cls, exc: ValidationError, what: str) -> InvalidInput:
        """An InvalidInput that names every offending field of a pydantic ValidationError."""
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]) or what, "problem": err["msg"]}
            for err in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{f['field']}: {f['problem']}" for f in fields)
        return cls(f"Invalid {what}: {summary}", fields=fields)


class UnknownAgent(BadRequest):
    """No agent of that type exists; `GET /api/agents` lists them."""

    code = "UNKNOWN_AGENT"


class Unauthorized(ConveyorError):
    """Send `Authorization: Bearer <Supabase access token>`."""

    status = 401
    code = "UNAUTHORIZED"


class TokenExpired(Unauthorized):
    """The access token has expired; refresh the session and retry."""

    code = "TOKEN_EXPIRED"


class InvalidToken(Unauthorized):
    """The access token is not valid for this project."""

    code = "INVALID_TOKEN"


class Forbidden(ConveyorError):
    """You are not allowed to do that."""

    status = 403
    code = "FORBIDDEN"


class NotFound(ConveyorError):
    """Nothing exists at that address."""

    status = 404
    code = "NOT_FOUND"


class RunNotFound(NotFound):
    """That run does not exist (or is not yours)."""

    code = "RUN_NOT_FOUND"


class UnknownWorkflow(NotFound):
    """No workflow has that id; `GET /api/workflows` lists them."""

    code = "UNKNOWN_WORKFLOW"


class Conflict(ConveyorError):
    """The request conflicts with the current state."""

    status = 409
    code = "CONFLICT"


class IdempotencyKeyReused(Conflict):
    """That Idempotency-Key was already used for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class RunFinished(Conflict):
    """The run has already finished."""

    code = "RUN_ALREADY_FINISHED"


class ServiceUnavailable(ConveyorError):
    """A backing service is unreachable; retry shortly."""

    status = 503
    code = "SERVICE_UNAVAILABLE"


class AgentFailed(ConveyorError):
    """The agent raised an error while running."""

    code = "AGENT_FAILED"


class SessionNotFound(NotFound):
    """That session does not exist (or is not yours)."""

    code = "SESSION_NOT_FOUND"


class RateLimited(ConveyorError):
    """You reached your plan's daily request limit."""

    status = 429
    code = "RATE_LIMITED"


class ConcurrencyLimited(ConveyorError):
    """Too many of your runs are in flight for your plan."""

    status = 429
    code = "CONCURRENCY_LIMIT"


class QuotaExceeded(ConveyorError):
    """Your monthly usage quota is used up."""

    status = 429
    code = "QUOTA_EXCEEDED"


class InsufficientCredits(ConveyorError):
    """Your credit balance does not cover this request; top up credits."""

    status = 403
    code = "INSUFFICIENT_CREDITS"


class UnknownUser(BadRequest):
    """No user has that id."""

    code = "UNKNOWN_USER"


class InvalidSignature(BadRequest):
    """The Stripe-Signature header does not match this body for any configured webhook secret."""

    code = "INVALID_SIGNATURE"


class UnknownPrice(BadRequest):
    """That price is not one Conveyor sells; STRIPE_PRICES lists the ones it does."""

    code = "UNKNOWN_PRICE"


class StripeEventNotFound(NotFound):
    """No Stripe event with that id was received."""

    code = "STRIPE_EVENT_NOT_FOUND"


class PaymentProviderError(ConveyorError):
    """Stripe refused or failed the request."""

    status = 502
    code = "PAYMENT_PROVIDER_ERROR"


class PaymentsNotConfigured(ConveyorError):
    """Payments are not configured on this server: set STRIPE_SECRET_KEY and STRIPE_PRICES."""

    status = 503
    code = "PAYMENTS_NOT_CONFIGURED"
