"""What the database holds for what the clients had accepted: each accepted run final, each
usage event and webhook applied once, ledger sums equal to the clients' own counts."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from conveyor.db import sql_connection
from tests.chaos.load import Tally
from tests.chaos.system import CREDITS_PER_PACK

FINAL = ("completed", "failed", "cancelled")


@dataclass
class Outcome:
    """The figures the chaos table prints for one fault."""

    runs_accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    handed_on: int = 0  # runs claimed more than once (their worker died or lost Postgres)
    usage_accepted: int = 0
    webhooks_accepted: int = 0
    lost: int = 0  # accepted usage events and webhooks not applied
    duplicates: int = 0  # applied more than once: usage, credit grants, steps, final statuses
    ledger_mismatch: int = 0  # users whose ledger sums differ from the clients' count

    @property
    def settled(self) -> bool:
        """Every accepted run final and every accepted item applied."""
        return self.unfinished == 0 and self.lost == 0


def outcome(database_url: str, tally: Tally) -> Outcome:
    """Read the database once for everything tally accepted."""
    with tally.lock:
        runs = [uuid.UUID(r) for r in tally.runs]
        usage = dict(tally.usage)
        webhooks = dict(tally.webhooks)
    result = Outcome(
        runs_accepted=len(runs), usage_accepted=len(usage), webhooks_accepted=len(webhooks)
    )
    with sql_connection(database_url, autocommit=True, connect_timeout=5) as conn:
        count_runs(conn, runs, result)
        count_usage(conn, usage, result)
        count_webhooks(conn, webhooks, result)
    return result


def count_runs(conn: psycopg.Connection[Any], runs: list[uuid.UUID], result: Outcome) -> None:
    """Statuses of the accepted runs; a step completed twice or a run finished twice is a
    duplicate (the fencing should make both impossible)."""
    rows = conn.execute(
        "select status, count(*) from workflow_runs where id = any(%s) group by status", (runs,)
    ).fetchall()
    by_status = {status: int(n) for status, n in rows}
    result.completed = by_status.get("completed", 0)
    result.failed = by_status.get("failed", 0)
    result.cancelled = by_status.get("cancelled", 0)
    result.unfinished = len(runs) - sum(by_status.get(s, 0) for s in FINAL)
    handed_on = conn.execute(
        "select count(*) from workflow_runs where id = any(%s) and attempt > 1", (runs,)
    ).fetchone()
    result.handed_on = int(handed_on[0]) if handed_on else 0
    row = conn.execute(
        """
        select coalesce(sum(n - 1), 0) from (
          select count(*) as n from run_events
           where run_id = any(%(runs)s) and event = 'step_completed'
           group by run_id, data->>'step'
          union all
          select count(*) from run_events
           where run_id = any(%(runs)s) and event = 'workflow_status_update'
             and data->>'status' = any(%(final)s)
           group by run_id
        ) counts where n > 1
        """,
        {"runs": runs, "final": list(FINAL)},
    ).fetchone()
    result.duplicates += int(row[0]) if row else 0


def count_usage(
    conn: psycopg.Connection[Any], usage: dict[tuple[uuid.UUID, str], int], result: Outcome
) -> None:
    """Events stored against the keys accepted, and each user's period totals against the sum
    of their accepted events' tokens."""
    users = sorted({user for user, _ in usage})
    stored = conn.execute(
        "select user_id, idempotency_key from usage_events where user_id = any(%s)", (users,)
    ).fetchall()
    stored_keys = [(user, key) for user, key in stored]
    result.lost += len(set(usage) - set(stored_keys))
    result.duplicates += len(stored_keys) - len(set(stored_keys))
    expected: dict[uuid.UUID, tuple[int, int]] = {}
    for (user, _), tokens in usage.items():
        events, total = expected.get(user, (0, 0))
        expected[user] = (events + 1, total + tokens)
    periods = conn.execute(
        "select user_id, sum(requests_used), sum(tokens_used) from usage_periods "
        "where user_id = any(%s) group by user_id",
        (users,),
    ).fetchall()
    found = {user: (int(requests), int(tokens)) for user, requests, tokens in periods}
    for user, (events, tokens) in expected.items():
        requests_used, tokens_used = found.get(user, (0, 0))
        result.duplicates += max(0, requests_used - events)
        if (requests_used, tokens_used) != (events, tokens):
            result.ledger_mismatch += 1


def count_webhooks(
    conn: psycopg.Connection[Any], webhooks: dict[str, tuple[uuid.UUID, str]], result: Outcome
) -> None:
    """Each accepted checkout processed once: its event final, one purchase row per session,
    and the user's balance equal to the sum of their ledger rows."""
    events = list(webhooks)
    users = sorted({user for user, _ in webhooks.values()})
    processed = conn.execute(
        "select count(*) from stripe_events where id = any(%s) and status = 'processed'",
        (events,),
    ).fetchone()
    result.lost += len(events) - (int(processed[0]) if processed else 0)
    purchases = conn.execute(
        "select user_id, reference, amount from credit_transactions "
        "where user_id = any(%s) and kind = 'purchase'",
        (users,),
    ).fetchall()
    sessions = {session for _, session in webhooks.values()}
    granted = [reference for _, reference, _ in purchases if reference in sessions]
    result.duplicates += len(granted) - len(set(granted))
    wrong_amount = [amount for _, _, amount in purchases if amount != CREDITS_PER_PACK]
    balances = conn.execute(
        """
        select a.user_id, a.credit_balance, coalesce(sum(t.amount), 0)
          from user_accounts a left join credit_transactions t using (user_id)
         where a.user_id = any(%s) group by a.user_id, a.credit_balance
        """,
        (users,),
    ).fetchall()
    off = [user for user, balance, ledger in balances if balance != ledger]
    result.ledger_mismatch += len(wrong_amount) + len(off)


def wait_settled(database_url: str, tally: Tally, timeout: float) -> tuple[Outcome, float]:
    """Poll until everything accepted is final and applied, or timeout; the last outcome and
    how long it took. Nothing is nudged: the system's own requeue jobs must do the work."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            found = outcome(database_url, tally)
        except psycopg.OperationalError:
            found = None  # Postgres still coming back
        if found is not None and (found.settled or time.monotonic() >= deadline):
            return found, time.monotonic() - started
        if time.monotonic() >= deadline:
            return outcome(database_url, tally), time.monotonic() - started
        time.sleep(0.5)
