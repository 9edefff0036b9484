"""schemathesis drives every operation of `/api/openapi.json` against the live app (real HTTP,
Postgres, Redis and worker) as a user, an admin, a usage service and nobody: no answer is a 5xx,
every 4xx is JSON `{error, code}`, and every answer matches the documented status and schema.

`FUZZ_MAX_EXAMPLES` sets the examples per operation and caller (`make fuzz` raises it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from celery.contrib.testing.worker import start_worker
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg import sql
from psycopg.conninfo import make_conninfo
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from conveyor.auth.tokens import mint_service_token
from tests import fake_stripe
from tests.fake_stripe import FakeStripe
from tests.fake_supabase_auth import ANON_KEY, SERVICE_KEY, FakeSupabaseAuth
from tests.support import (
    API_SECRET,
    JWT_SECRET,
    LiveServer,
    close_worker_resources,
    make_settings,
    token_for,
)
from worker.celery_app import create_celery

pytestmark = [
    pytest.mark.fuzz,
    # schemathesis draws from `random` inside a few strategies, which hypothesis deprecates.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "4"))
# The bounded run in `make test` is the same every time; a longer `make fuzz` explores.
DERANDOMIZE = "FUZZ_MAX_EXAMPLES" not in os.environ
CALLERS = ["user", "admin", "service", "anonymous"]


@pytest.fixture(scope="module")
def fuzz_database(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for the whole fuzz run (cloning one per example would dominate)."""
    name = f"conveyor_fuzz_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("create database {} template {}")
    drop = sql.SQL("drop database if exists {} with (force)")
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(create.format(sql.Identifier(name), sql.Identifier(template_database)))
    try:
        yield make_conninfo(pg_admin_url, dbname=name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def fuzz_stripe() -> Iterator[FakeStripe]:
    """Stripe's API on loopback, so payments are configured as in production."""
    with FakeStripe() as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_auth() -> Iterator[FakeSupabaseAuth]:
    """Supabase Auth's API on loopback, so the auth proxies are configured as in production."""
    server = FakeSupabaseAuth(JWT_SECRET)
    yield server
    server.close()


@pytest.fixture(scope="module")
def fuzz_server(
    fuzz_database: str, redis_url: str, fuzz_stripe: FakeStripe, fuzz_auth: FakeSupabaseAuth
) -> Iterator[LiveServer]:
    """The app on a real HTTP server with a real worker behind it, shared by the module."""
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-fuzz-"))
    settings = make_settings(
        fuzz_database,
        redis_url,
        data_dir,
        stripe_api_base=fuzz_stripe.url,
        supabase_url=fuzz_auth.url,
        supabase_anon_key=ANON_KEY,
        # The admin listing of Supabase's users (seed 003) needs it, as in production.
        supabase_service_role_key=SERVICE_KEY,
        stripe_secret_key=fake_stripe.SECRET_KEY,
        stripe_webhook_secret="whsec_fuzz",
        stripe_prices={"price_basic": {"plan": "basic"}, "price_pack_100": {"credits": 100}},
        stripe_price_id="price_basic",
        stripe_success_url="https://app.example.com/billing/done",
        stripe_cancel_url="https://app.example.com/billing",
        # A synchronous execute waits this long for its run; the fuzzer need not.
        workflow_wait_seconds=0.2,
    )
    celery_app = create_celery(settings)
    with (
        start_worker(
            celery_app,
            pool="solo",
            perform_ping_check=False,
            shutdown_timeout=20,
            loglevel="WARNING",
        ),
        LiveServer(settings) as server,
    ):
        yield server
    close_worker_resources(celery_app)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    """The contract as the server publishes it."""
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/api/openapi.json")


def caller_headers(caller: str) -> dict[str, str]:
    """The Authorization header of a kind of caller (none for anonymous)."""
    token = {
        "user": token_for(uuid.uuid4()),
        "admin": token_for(uuid.uuid4(), admin=True),
        "service": mint_service_token("fuzz", ["usage:write"], secret=API_SECRET),
        "anonymous": None,
    }[caller]
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_has_json_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is a JSON object with a string `error` and a string `code`."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"4xx as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert isinstance(body.get("code"), str), body
    return True


CHECKS = [
    not_a_server_error,
    error_has_json_shape,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str], base_url: str) -> None:
    """Send MAX_EXAMPLES generated requests for operation and run every check on each answer."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def send(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

    # Unsatisfiable: nothing about this operation can be made invalid (no body, no constraints).
    with contextlib.suppress(Unsatisfiable):
        send()


@pytest.mark.timeout(max(120, MAX_EXAMPLES * 30))
@pytest.mark.parametrize("caller", CALLERS)
def test_api_keeps_its_contract_under_fuzzing(
    caller: str, api_schema: Any, fuzz_server: LiveServer, subtests: pytest.Subtests
) -> None:
    headers = caller_headers(caller)
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(msg=f"{operation.label} ({mode.value})"):
                fuzz(operation, mode, headers, fuzz_server.url)
