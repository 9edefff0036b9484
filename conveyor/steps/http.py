"""The `http` step: call a URL with a timeout; 429, 5xx and network errors retry, 4xx do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import Field

from conveyor.steps.base import StepConfig, StepContext, StepFailure, StepKind, StepResult

MAX_BODY_CHARS = 2_000


class HttpConfig(StepConfig):
    """`http` step configuration; strings may be templates."""

    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, when it sent a number."""
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def failure_for_status(response: httpx.Response, what: str, code: str) -> StepFailure:
    """A StepFailure for a non-2xx answer: retry 408/429/5xx, give up on other 4xx."""
    status = response.status_code
    retryable = status in (408, 429) or status >= 500
    snippet = response.text[:MAX_BODY_CHARS]
    return StepFailure(
        f"{what} answered {status}: {snippet}",
        retryable=retryable,
        code=code,
        retry_after=retry_after_seconds(response) if retryable else None,
    )


def failure_for_transport(exc: httpx.TransportError, what: str, code: str) -> StepFailure:
    """Timeouts and connection errors are worth another attempt."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return StepFailure(f"{what} {kind}: {exc}", retryable=True, code=code)


def send(
    ctx: StepContext,
    request: httpx.Request,
    *,
    what: str,
    code: str,
    on_response: Callable[[httpx.Response], None] | None = None,
    before_send: Callable[[], None] | None = None,
) -> httpx.Response:
    """Send request within the step's remaining time; any non-2xx becomes a StepFailure.
    before_send runs once the client is ready (an LLM step takes its rate limit there, so little
    time passes between admission and the provider's receipt); on_response sees every answer
    first (an LLM step reads the provider's quota headers)."""
    ctx.check()
    # No redirects: a step calls exactly the URL its definition names.
    with httpx.Client(timeout=ctx.remaining(), follow_redirects=False) as client:
        if before_send is not None:
            before_send()
        try:
            response = client.send(request)
        except httpx.TransportError as exc:
            raise failure_for_transport(exc, what, code) from exc
    if on_response is not None:
        on_response(response)
    if not response.is_success:
        raise failure_for_status(response, what, code)
    return response


def run_http(ctx: StepContext, config: HttpConfig) -> StepResult:
    """Call the URL; the output is the status and the body (JSON when the server says so)."""
    request = httpx.Request(
        config.method,
        config.url,
        headers=config.headers,
        params=config.params,
        json=config.json_body,
    )
    response = send(ctx, request, what=f"{config.method} {config.url}", code="HTTP_ERROR")
    is_json = response.headers.get("content-type", "").startswith("application/json")
    try:
        body = response.json() if is_json else response.text
    except ValueError as exc:
        raise StepFailure(
            f"{config.url} sent invalid JSON: {exc}", retryable=False, code="HTTP_ERROR"
        ) from exc
    return StepResult({"status_code": response.status_code, "body": body})


HTTP = StepKind("http", HttpConfig, run_http)
