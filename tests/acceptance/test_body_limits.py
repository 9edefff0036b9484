"""Bodies over MAX_BODY_BYTES answer 413 in the JSON error shape, however they are sent; a full
usage batch has its own, larger limit."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.auth.tokens import mint_service_token
from tests.support import API_SECRET, ApiClient

LIMIT = 64 * 1024
USAGE_LIMIT = 4 * 1024 * 1024
SETTINGS = {
    "max_body_bytes": LIMIT,
    "usage_max_body_bytes": USAGE_LIMIT,
    "stripe_webhook_secret": "whsec_test_body_limits",
}


def assert_413(response: Any) -> None:
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "REQUEST_ENTITY_TOO_LARGE"
    assert response.json()["error"]


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    """A JSON body of about `total` bytes, sent chunked (no Content-Length)."""
    yield b'{"agent_type": "echo", "input": {"message": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}}'


def test_an_oversized_body_with_a_content_length_is_413(client: ApiClient) -> None:
    body = b'{"agent_type": "echo", "input": {"message": "' + b"x" * 2 * LIMIT + b'"}}'

    response = client.post(
        "/api/agents/invoke", data=body, headers={"Content-Type": "application/json"}
    )

    assert_413(response)


def test_an_oversized_chunked_body_is_413(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", data=chunks(2 * LIMIT), headers={"Content-Type": "application/json"}
    )

    assert "Content-Length" not in response.request.headers
    assert_413(response)


def test_an_oversized_stripe_webhook_is_413(anonymous: ApiClient) -> None:
    response = anonymous.post(
        "/api/payments/webhook",
        data=b'{"id": "' + b"x" * 2 * LIMIT + b'"}',
        headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
    )

    assert_413(response)


def usage_event(i: int) -> dict[str, Any]:
    """An event with long (valid) strings: ~1.2 KB of JSON."""
    return {
        "user_id": str(uuid.uuid4()),
        "idempotency_key": f"{i:08d}-" + "k" * 240,
        "provider": "p" * 100,
        "model": "m" * 200,
        "agent_mode": "a" * 100,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "error": "e" * 300,
        "run_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
    }


def service_client(make_client: Callable[..., ApiClient]) -> ApiClient:
    return make_client(token=mint_service_token("billing", ["usage:write"], secret=API_SECRET))


def test_a_full_usage_batch_over_the_general_limit_is_accepted(
    make_client: Callable[..., ApiClient],
) -> None:
    batch = {"events": [usage_event(i) for i in range(1000)]}

    response = service_client(make_client).post("/api/usage", json=batch)

    assert response.status_code == 202, response.text
    assert len(response.request.body or b"") > 1024 * 1024
    assert response.json() == {"accepted": 1000}


def test_a_usage_body_over_its_own_limit_is_413(make_client: Callable[..., ApiClient]) -> None:
    event = usage_event(0) | {"error": "e" * 10_000}
    body = {"events": [event] * 1000}  # ~11 MB, over USAGE_LIMIT

    assert_413(service_client(make_client).post("/api/usage", json=body))


def test_an_oversized_chunked_stripe_webhook_is_413(anonymous: ApiClient) -> None:
    response = anonymous.post(
        "/api/payments/webhook",
        data=chunks(2 * LIMIT),
        headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
    )

    assert_413(response)
