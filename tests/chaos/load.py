"""A steady stream of workflow submits, usage batches and Stripe webhooks, sent as a careful
client sends them: a 503 or a connection error is retried with the same idempotency key (or the
same Stripe event), and an item counts as accepted only once it got a 2xx. What was accepted is
tallied here, independently of the database, for the checks afterwards."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from conveyor.auth.tokens import mint_service_token
from tests.chaos.system import CREDITS_PER_PACK, PACK_PRICE, STRIPE_SECRET
from tests.chaos.workflows import WORKFLOW
from tests.fake_stripe import credit_pack_session, event, sign
from tests.support import API_SECRET, token_for

REQUEST_TIMEOUT = 15.0
# A client gives an item up after this long without a 2xx (then it is not counted accepted).
GIVE_UP_SECONDS = 60.0
RETRY_PAUSE = 0.25
USAGE_BATCH = 5
TOKENS_PER_EVENT = 120  # prompt 100 + completion 20


@dataclass
class Tally:
    """What the clients know: what was accepted, and every status the API answered."""

    runs: dict[str, uuid.UUID] = field(default_factory=dict)  # run id -> its user
    usage: dict[tuple[uuid.UUID, str], int] = field(default_factory=dict)  # (user, key) -> tokens
    webhooks: dict[str, tuple[uuid.UUID, str]] = field(default_factory=dict)  # event -> user, cs
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # 5xx other than a proper 503
    abandoned: Counter[str] = field(default_factory=Counter)  # items never accepted
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, route: str, response: requests.Response) -> None:
        """Record one answer; a 5xx other than a JSON 503 with Retry-After is a failure."""
        with self.lock:
            self.statuses[(route, response.status_code)] += 1
            if response.status_code < 500:
                return
            if response.status_code == 503 and proper_503(response):
                return
            self.unexpected.append(f"{route}: {response.status_code} {response.text[:300]}")

    def count(self, status: int) -> int:
        """How many answers had this status, all routes together."""
        with self.lock:
            return sum(n for (_, code), n in self.statuses.items() if code == status)


def proper_503(response: requests.Response) -> bool:
    """A 503 as the API promises it: JSON code SERVICE_UNAVAILABLE and a Retry-After."""
    try:
        code = response.json().get("code")
    except ValueError:
        return False
    return code == "SERVICE_UNAVAILABLE" and "Retry-After" in response.headers


def send_until_accepted(
    tally: Tally, route: str, send: Callable[[], requests.Response]
) -> requests.Response | None:
    """send() until a 2xx; a 503 or a connection error is retried, anything else gives up."""
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while time.monotonic() < deadline:
        try:
            response = send()
        except requests.RequestException:
            time.sleep(RETRY_PAUSE)
            continue
        tally.saw(route, response)
        if 200 <= response.status_code < 300:
            return response
        if response.status_code != 503:
            break
        time.sleep(RETRY_PAUSE)
    with tally.lock:
        tally.abandoned[route] += 1
    return None


def submit_run(base_url: str, tally: Tally, n: int) -> str | None:
    """Submit the chaos workflow for a new user; the run id once accepted."""
    user = uuid.uuid4()
    headers = {"Authorization": f"Bearer {token_for(user)}", "Idempotency-Key": f"chaos-{n}"}
    body = {"workflow_id": WORKFLOW, "inputs": {"n": n}, "async": True}
    response = send_until_accepted(
        tally,
        "execute",
        lambda: requests.post(
            f"{base_url}/api/agents/workflows/execute",
            json=body,
            headers=headers,
            timeout=REQUEST_TIMEOUT,
        ),
    )
    if response is None:
        return None
    run_id = str(response.json()["workflow_run_id"])
    with tally.lock:
        tally.runs[run_id] = user
    return run_id


def send_usage(base_url: str, tally: Tally, token: str) -> None:
    """One batch of USAGE_BATCH events for a new user, each with its own idempotency key."""
    user = uuid.uuid4()
    events = [
        {
            "user_id": str(user),
            "idempotency_key": f"chaos-{i}",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "prompt_tokens": 100,
            "completion_tokens": TOKENS_PER_EVENT - 100,
        }
        for i in range(USAGE_BATCH)
    ]
    accepted = send_until_accepted(
        tally,
        "usage",
        lambda: requests.post(
            f"{base_url}/api/usage",
            json={"events": events},
            headers={"Authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT,
        ),
    )
    if accepted is not None:
        with tally.lock:
            for item in events:
                tally.usage[(user, str(item["idempotency_key"]))] = TOKENS_PER_EVENT


def send_webhook(base_url: str, tally: Tally) -> None:
    """A paid credit-pack checkout for a new user, delivered (and re-signed on each retry) as
    Stripe delivers it."""
    user = uuid.uuid4()
    session = credit_pack_session(user, credits=CREDITS_PER_PACK)
    session["metadata"]["conveyor_price_id"] = PACK_PRICE
    document = event("checkout.session.completed", session)
    payload = json.dumps(document).encode()

    def deliver() -> requests.Response:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(payload, STRIPE_SECRET),
        }
        return requests.post(
            f"{base_url}/api/payments/webhook",
            data=payload,
            headers=headers,
            timeout=REQUEST_TIMEOUT,
        )

    if send_until_accepted(tally, "webhook", deliver) is not None:
        with tally.lock:
            tally.webhooks[str(document["id"])] = (user, str(session["id"]))


class Load:
    """Three client threads, each sending one item every `every` seconds until stopped."""

    def __init__(self, base_url: str, every: float = 0.3) -> None:
        self.base_url = base_url
        self.tally = Tally()
        self._every = every
        self._stop = threading.Event()
        self._counter = iter(range(1_000_000))
        self._counter_lock = threading.Lock()
        service = mint_service_token("chaos", ["usage:write"], secret=API_SECRET)
        senders: dict[str, Callable[[], Any]] = {
            "runs": lambda: submit_run(self.base_url, self.tally, self._next()),
            "usage": lambda: send_usage(self.base_url, self.tally, service),
            "webhooks": lambda: send_webhook(self.base_url, self.tally),
        }
        self._threads = [
            threading.Thread(target=self._loop, args=(send,), name=f"chaos-{name}", daemon=True)
            for name, send in senders.items()
        ]

    def _next(self) -> int:
        with self._counter_lock:
            return next(self._counter)

    def _loop(self, send: Callable[[], object]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            send()
            self._stop.wait(max(0.0, self._every - (time.monotonic() - started)))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending new items; items being retried finish (bounded by GIVE_UP_SECONDS)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=GIVE_UP_SECONDS + REQUEST_TIMEOUT)


def probe_recovery(base_url: str, tally: Tally, since: float, timeout: float = 90.0) -> float:
    """Seconds from `since` (monotonic) until a newly submitted run completed end to end; each
    probe gets 20 s before another is submitted. Probes are tallied like any other run."""
    deadline = time.monotonic() + timeout
    n = 900_000
    while time.monotonic() < deadline:
        n += 1
        run_id = submit_run(base_url, tally, n)
        if run_id is None:
            continue
        user = tally.runs[run_id]
        headers = {"Authorization": f"Bearer {token_for(user)}"}
        probe_deadline = min(deadline, time.monotonic() + 20)
        while time.monotonic() < probe_deadline:
            try:
                response = requests.get(
                    f"{base_url}/api/runs/{run_id}", headers=headers, timeout=REQUEST_TIMEOUT
                )
            except requests.RequestException:
                response = None
            if response is not None:
                tally.saw("run", response)
            completed = (
                response is not None
                and response.status_code == 200
                and (response.json()["status"] == "completed")
            )
            if completed:
                return time.monotonic() - since
            time.sleep(0.1)
    raise AssertionError(f"no new run completed within {timeout} s of the fault")
