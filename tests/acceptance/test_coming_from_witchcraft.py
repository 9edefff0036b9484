"""Seed 000 (Witchcraft's auth and AI usage backend), called as its document writes it: register
and login against a server speaking Supabase Auth's API, track-usage into the native ledger
within the quota and exactly once, the usage summary and quota (agent sessions and messages:
test_coming_from_witchcraft_sessions.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.witchcraft_calls import (
    DOCUMENTED_USAGE,
    assert_error,
    ledger,
    login_audit,
    new_session,
    post_raw,
    track,
)
from tests.fake_supabase_auth import FakeSupabaseAuth
from tests.support import API_SECRET, ApiClient, LiveServer

USES_FAKE_AUTH = True
ClientFactory = Callable[..., ApiClient]

# Register and login.


@pytest.mark.parametrize(
    ("autoconfirm", "message"),
    [(False, "User created. Please verify your email."),
     (True, "User created. You can sign in now.")],
)  # fmt: skip
def test_register_creates_a_supabase_user_with_the_name(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, autoconfirm: bool, message: str
) -> None:
    fake_auth.autoconfirm = autoconfirm
    response = anonymous.post(
        "/api/auth/register",
        json={"email": "Test@Example.com", "password": "password123", "name": "Test User"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == message
    user = fake_auth.users[uuid.UUID(body["userId"])]
    assert (user.email, user.user_metadata) == ("test@example.com", {"name": "Test User"})


def test_login_returns_supabases_access_token_which_the_api_accepts(
    anonymous: ApiClient, make_client: ClientFactory, db: Database
) -> None:
    credentials = {"email": "test@example.com", "password": "password123"}
    user_id = anonymous.post("/api/auth/register", json=credentials).json()["userId"]

    response = anonymous.post("/api/auth/login", json=credentials)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["userId"], body["email"]) == (user_id, "test@example.com")
    assert body["refreshToken"]
    session = make_client(token=body["accessToken"])
    assert session.get("/api/user/quota").status_code == 200
    assert login_audit(db) == [("success", None, user_id)]


AUTH_REFUSALS = [
    ("/api/auth/login", {"email": "ada@example.com", "password": "wrong"}, 401,
     "INVALID_CREDENTIALS"),
    ("/api/auth/login", {"email": "late@example.com", "password": "password123"}, 403,
     "EMAIL_NOT_CONFIRMED"),
    ("/api/auth/register", {"email": "ada@example.com", "password": "password123"}, 409,
     "USER_ALREADY_EXISTS"),
    ("/api/auth/register", {"email": "new@example.com", "password": "short"}, 400,
     "WEAK_PASSWORD"),
    ("/api/auth/register", {"email": "not-an-email", "password": "password123"}, 400,
     "INVALID_INPUT"),
    ("/api/auth/login", {"email": "ada@example.com"}, 400, "INVALID_INPUT"),
]  # fmt: skip


def test_auth_refusals_are_clear_4xx_and_failed_logins_are_audited(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, db: Database
) -> None:
    fake_auth.add_user("ada@example.com", "password123")
    fake_auth.add_user("late@example.com", "password123", confirmed=False)
    for path, body, status, code in AUTH_REFUSALS:
        assert_error(anonymous.post(path, json=body), status, code)
    assert login_audit(db) == [
        ("failure", "INVALID_CREDENTIALS", None),
        ("failure", "EMAIL_NOT_CONFIRMED", None),
    ]


def test_without_supabase_url_register_and_login_answer_503(settings: Settings) -> None:
    unconfigured = settings.model_copy(update={"supabase_url": None})
    with LiveServer(unconfigured) as server:
        anonymous = ApiClient(server.url, None)
        for path in ("/api/auth/register", "/api/auth/login"):
            response = anonymous.post(path, json={"email": "a@b.co", "password": "password123"})
            assert_error(response, 503, "AUTH_NOT_CONFIGURED")


# Track usage.


def test_documented_track_usage_lands_in_the_native_ledger(
    client: ApiClient, user_id: uuid.UUID
) -> None:
    response = track(client, userId=str(user_id))

    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["requestId"], int)
    assert (body["totalTokens"], body["costMicroUsd"], body["userId"]) == (150, 0, str(user_id))
    events = client.get("/api/usage/events").json()["events"]
    assert [(e["id"], e["model"], e["agent_mode"]) for e in events] == [
        (body["requestId"], "llama2", "understand")
    ]
    assert client.get("/api/user/quota").json()["used"]["tokens"] == 150
    summary = client.get("/api/user/usage-summary", params={"days": 7}).json()
    assert summary["days"] == 7
    assert summary["totals"]["requests"] == 1


def test_usd_becomes_exact_micro_usd_rounded_half_to_even(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    # JavaScript's 0.1 + 0.2 as JSON.stringify writes it, and half a micro-USD (rounds to even);
    # the fields by their snake_case names, which are accepted too.
    response = post_raw(
        client,
        '{"provider": "openai", "model": "gpt-4o", "agent_mode": "debug", "prompt_tokens": 1,'
        ' "completion_tokens": 1, "input_cost_usd": 0.30000000000000004,'
        ' "output_cost_usd": 0.0000025, "success": false, "error_message": "timeout"}',
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["inputCostMicroUsd"], body["outputCostMicroUsd"], body["success"]) == (
        300000,
        2,
        False,
    )
    assert ledger(db, user_id)["period"]["cost_used_micro_usd"] == 300002


BAD_USAGE: list[dict[str, Any]] = [
    {"inputCostUsd": -0.01}, {"outputCostUsd": "0.5"}, {"inputCostUsd": True},
    {"inputCostUsd": 1e7}, {"promptTokens": -1}, {"promptTokens": 1.5}, {"completionTokens": "50"},
    {"provider": ""}, {"sessionId": 42}, {"userId": 7}, {"success": "yes"},
    {"promptTokens": 100, "prompt_tokens": 101}, {"inputCostUsd": None},
]  # fmt: skip
NOT_USAGE = [
    ('{"inputCostUsd": NaN}', "INVALID_JSON"),
    ('{"inputCostUsd": Infinity}', "INVALID_JSON"),
    ("[1, 2]", "INVALID_INPUT"),
    ("{", "INVALID_JSON"),
    (  # a lone surrogate, which no UTF-8 text (nor Postgres) can hold
        r'{"provider": "\ud800", "model": "m", "agentMode": "debug", "promptTokens": 1,'
        r' "completionTokens": 1}',
        "INVALID_JSON",
    ),
]


def test_bad_usage_is_400_and_records_nothing(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    for body in BAD_USAGE:
        assert_error(track(client, **body), 400, "INVALID_INPUT")
    for raw, code in NOT_USAGE:
        assert_error(post_raw(client, raw), 400, code)
    assert ledger(db, user_id)["events"] == []


@pytest.mark.parametrize("how", ["header", "body"])
def test_a_retry_with_the_same_key_answers_the_first_recording_and_records_nothing(
    client: ApiClient, db: Database, user_id: uuid.UUID, how: str
) -> None:
    def send() -> Any:
        if how == "header":
            return client.post(
                "/api/ai/track-usage", json=DOCUMENTED_USAGE, headers={"Idempotency-Key": "req-1"}
            )
        return track(client, idempotencyKey="req-1")

    first, retry = send(), send()

    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert first.json()["idempotencyKey"] == "req-1"
    assert retry.headers["Idempotent-Replayed"] == "true"
    reused = track(client, idempotencyKey="req-1", promptTokens=999)  # another request
    assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED")
    found = ledger(db, user_id)
    assert len(found["events"]) == 1
    assert (found["period"]["tokens_used"], found["period"]["requests_used"]) == (150, 1)


@pytest.mark.parametrize(
    ("over", "fits"),
    [
        ({"promptTokens": 60_000}, {"promptTokens": 49_900}),
        ({"inputCostUsd": 1.9}, {"inputCostUsd": 1.5}),
    ],
    ids=["tokens", "cost"],
)
def test_usage_over_the_monthly_quota_is_429_and_not_recorded(
    client: ApiClient, db: Database, user_id: uuid.UUID, over: dict[str, Any], fits: dict[str, Any]
) -> None:
    # The free plan: 200,000 tokens and 2,000,000 micro-USD a month.
    big = {"promptTokens": 150_000, "inputCostUsd": 0.5, "idempotencyKey": "big"}
    assert track(client, **big).status_code == 200
    before = ledger(db, user_id)

    response = track(client, **over)

    assert_error(response, 429, "QUOTA_EXCEEDED")
    assert int(response.headers["Retry-After"]) > 0
    assert track(client, **big).status_code == 200  # a retry of a recorded request: no new check
    assert ledger(db, user_id) == before
    assert track(client, **fits).status_code == 200  # exactly what is left still fits


def test_users_track_their_own_usage_and_a_usage_write_service_a_named_users(
    make_client: ClientFactory, client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    stranger = uuid.uuid4()
    assert_error(track(client, userId=str(stranger)), 403, "FORBIDDEN")
    assert ledger(db, stranger)["events"] == []
    client.get("/api/user/quota")  # the user has an account
    service = make_client(
        token=mint_service_token("witchcraft", ["usage:write"], secret=API_SECRET)
    )

    assert track(service, userId=str(user_id)).status_code == 200
    assert_error(track(service), 400, "INVALID_INPUT")
    assert_error(track(service, userId=str(uuid.uuid4())), 400, "UNKNOWN_USER")
    unscoped = make_client(token=mint_service_token("other", ["credits:write"], secret=API_SECRET))
    assert_error(track(unscoped, userId=str(user_id)), 403, "FORBIDDEN")
    assert len(ledger(db, user_id)["events"]) == 1


def test_usage_names_only_the_callers_own_session(
    make_client: ClientFactory, client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    assert_error(track(client, sessionId=new_session(make_client())), 404, "SESSION_NOT_FOUND")
    mine = new_session(client)
    assert track(client, sessionId=mine).json()["sessionId"] == mine
    assert [str(e["session_id"]) for e in ledger(db, user_id)["events"]] == [mine]


def test_every_documented_path_also_answers_with_a_trailing_slash(
    anonymous: ApiClient, make_client: ClientFactory
) -> None:
    # Express's default routing is not strict: `/api/auth/login/` is `/api/auth/login`.
    credentials = {"email": "test@example.com", "password": "password123"}
    assert anonymous.post("/api/auth/register/", json=credentials).status_code == 200
    login = anonymous.post("/api/auth/login/", json=credentials)
    assert login.status_code == 200, login.text
    client = make_client(token=login.json()["accessToken"])
    assert client.post("/api/ai/track-usage/", json=DOCUMENTED_USAGE).status_code == 200
    session = client.post("/api/agent/session/", json={"agentMode": "debug"})
    assert session.status_code == 200, session.text
    message = {"sessionId": session.json()["id"], "role": "user", "content": "Hi"}
    assert client.post("/api/agent/message/", json=message).status_code == 200
    assert client.get("/api/user/quota/").status_code == 200
    assert client.get("/api/user/usage-summary/", params={"days": 30}).status_code == 200
