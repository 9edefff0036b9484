"""A user with one row in every Conveyor table that holds users' data, for the erasure tests.

Inserted directly (as the schema's owner) so each table gets exactly one row of the user: the
counts forget_user returns are then all 1. A table added later with a user_id column fails
test_the_seeded_user_has_a_row_in_every_table_with_a_user_id until it is seeded here (and, so
that the next test passes, forgotten by conveyor.forget_user).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg import sql

# Every key conveyor.forget_user reports, each 1 for a user given seed_user.
FORGOTTEN_PER_TABLE = (
    "agent_messages", "agent_sessions", "audit_logs_anonymized", "credit_reservations",
    "credit_transactions",
    "notification_counters", "notifications", "profiles", "run_events", "runs_per_day",
    "schedules", "stripe_payments",
    "tenant_members", "tenants", "usage_batch_events", "usage_daily", "usage_events",
    "usage_periods", "user_accounts", "user_roles", "user_subscriptions",
    "webhook_delivery_attempts", "webhook_deliveries", "webhook_endpoints", "webhook_events",
    "webhook_signing_secrets", "workflow_runs", "workflow_steps",
)  # fmt: skip

# Tables of schema conveyor with a column named user_id.
USER_ID_TABLES_SQL = """
select c.table_name::text from information_schema.columns c
  join information_schema.tables t using (table_schema, table_name)
 where c.table_schema = 'conveyor' and c.column_name = 'user_id' and t.table_type = 'BASE TABLE'
 order by 1
"""


def usage_event(user: uuid.UUID, key: str) -> dict[str, Any]:
    """One event as a usage batch stores it (conveyor.ledger.ingest.events_json's form)."""
    return {
        "user_id": str(user),
        "idempotency_key": key,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "input_cost_micro_usd": 1,
        "output_cost_micro_usd": 3,
    }


def store_batch(conn: psycopg.Connection[Any], events: list[dict[str, Any]]) -> uuid.UUID:
    """A usage batch waiting to be recorded, as POST /api/usage stores it."""
    row = conn.execute(
        "insert into conveyor.usage_batches (events, event_count) values (%s::json, %s) "
        "returning id",
        (json.dumps(events), len(events)),
    ).fetchone()
    assert row is not None
    batch: uuid.UUID = row[0]
    return batch


def seed_user(conn: psycopg.Connection[Any], user: uuid.UUID) -> uuid.UUID:
    """One row of user's in every table holding users' data, children included; returns the
    user's run (running, held by attempt 1)."""
    tag = user.hex

    def one(query: str, *params: object) -> Any:
        cursor = conn.execute(query, params)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None

    one("insert into conveyor.user_roles (user_id, role) values (%s, 'admin')", user)
    tenant = one(
        "insert into conveyor.tenants (name, personal_owner) values ('Personal', %s) returning id",
        user,
    )
    one(
        "insert into conveyor.tenant_members (tenant_id, user_id, role) values (%s, %s, 'owner')",
        tenant,
        user,
    )
    session = one(
        "insert into conveyor.agent_sessions (user_id, agent_mode, last_sequence_number) "
        "values (%s, 'chat', 1) returning id",
        user,
    )
    one(
        "insert into conveyor.agent_messages (session_id, sequence_number, role, content) "
        "values (%s, 1, 'user', 'hello')",
        session,
    )
    # Its insert trigger also counts the run in runs_per_day.
    run = one(
        "insert into conveyor.workflow_runs (user_id, kind, workflow_id, status, attempt, "
        "lease_expires_at, started_at, session_id, last_event_seq) "
        "values (%s, 'agent', 'echo', 'running', 1, now() + interval '1 hour', now(), %s, 1) "
        "returning id",
        user,
        session,
    )
    one(
        "insert into conveyor.workflow_steps (run_id, position, name, kind, status, attempt) "
        "values (%s, 0, 'echo', 'python', 'running', 1)",
        run,
    )
    one(
        "insert into conveyor.run_events (run_id, seq, event) "
        "values (%s, 1, 'workflow_status_update')",
        run,
    )
    one(
        "insert into conveyor.user_accounts (user_id, credit_balance, stripe_customer_id) "
        "values (%s, 10, %s)",
        user,
        f"cus_{tag}",
    )
    one(
        "insert into conveyor.usage_periods (user_id, period_start, token_quota, "
        "cost_quota_micro_usd) values (%s, date_trunc('month', now())::date, 1000, 1000)",
        user,
    )
    one(
        "insert into conveyor.usage_events (user_id, idempotency_key, provider, model, "
        "prompt_tokens, completion_tokens, input_cost_micro_usd, output_cost_micro_usd, run_id) "
        "values (%s, 'seeded', 'openai', 'gpt-4o-mini', 10, 5, 1, 3, %s)",
        user,
        run,
    )
    one(
        "insert into conveyor.usage_daily (day, user_id, model, requests, prompt_tokens, "
        "completion_tokens, cost_micro_usd, failed) "
        "values (current_date, %s, 'gpt-4o-mini', 1, 10, 5, 4, 0)",
        user,
    )
    one(
        "insert into conveyor.credit_transactions (user_id, amount, balance_after, kind, "
        "reference) values (%s, 10, 10, 'purchase', %s)",
        user,
        f"cs_{tag}",
    )
    one(
        "insert into conveyor.user_subscriptions (stripe_subscription_id, user_id, "
        "stripe_customer_id, plan_id, status, state_at, state_event_id) "
        "values (%s, %s, %s, 'basic', 'active', now(), 'evt_seeded')",
        f"sub_{tag}",
        user,
        f"cus_{tag}",
    )
    one(
        "insert into conveyor.stripe_payments (id, user_id, credits, amount, currency) "
        "values (%s, %s, 10, 500, 'usd')",
        f"cs_{tag}",
        user,
    )
    one("insert into conveyor.notification_counters (user_id, last_seq) values (%s, 1)", user)
    one(
        "insert into conveyor.notifications (user_id, seq, notification_type, severity, title, "
        "message) values (%s, 1, 'run_completed', 'success', 'Done', 'Your run finished')",
        user,
    )
    endpoint = one(
        "insert into conveyor.webhook_endpoints (user_id, url, events, secret) "
        "values (%s, 'https://example.com/hook', array['run.completed'], %s) returning id",
        user,
        f"whsec_{tag}",
    )
    one(
        "insert into conveyor.webhook_signing_secrets (user_id, secret) values (%s, %s)",
        user,
        f"whsec_run_{tag}",
    )
    event = one(
        "insert into conveyor.webhook_events (id, user_id, type, data) "
        "values (%s, %s, 'run.completed', '{}') returning id",
        f"evt_{tag}",
        user,
    )
    delivery = one(
        "insert into conveyor.webhook_deliveries (event_id, user_id, endpoint_id, url) "
        "values (%s, %s, %s, 'https://example.com/hook') returning id",
        event,
        user,
        endpoint,
    )
    one(
        "insert into conveyor.webhook_delivery_attempts (delivery_id, attempt, status_code, "
        "latency_ms) values (%s, 1, 500, 12)",
        delivery,
    )
    one(
        "insert into conveyor.audit_logs (actor_user_id, action, outcome, subject, ip, "
        "user_agent) values (%s, 'auth.exchange', 'success', %s, '203.0.113.7', 'curl/8')",
        user,
        str(tenant),
    )
    one(
        "insert into conveyor.profiles (user_id, profile_data) values (%s, %s::jsonb)",
        user,
        json.dumps({"name": "Seeded"}),
    )
    one(
        "insert into conveyor.schedules (user_id, workflow_id, cron, timezone, next_due_at) "
        "values (%s, 'write_brief', '0 9 * * *', 'UTC', now() + interval '1 day') returning id",
        user,
    )
    one(
        "insert into conveyor.credit_reservations (user_id, run_id, run_attempt, position, "
        "attempt, period_start, model, credits, tokens, cost_micro_usd, credits_per_usd) "
        "values (%s, %s, 1, 0, 1, conveyor.conveyor_period_start(now()), 'gpt-4o-mini', 5, 50, "
        "5, 1000000)",
        user,
        run,
    )
    store_batch(conn, [usage_event(user, "waiting")])
    assert isinstance(run, uuid.UUID)
    return run


def user_id_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Every table of schema conveyor with a column named user_id."""
    return [name for (name,) in conn.execute(USER_ID_TABLES_SQL)]


def rows_of(conn: psycopg.Connection[Any], user: uuid.UUID) -> dict[str, int]:
    """The user's rows in each table of schema conveyor that has a user_id column."""
    return {
        table: conn.execute(
            sql.SQL("select count(*) from conveyor.{} where user_id = %s").format(
                sql.Identifier(table)
            ),
            (user,),
        ).fetchone()[0]  # type: ignore[index]
        for table in user_id_tables(conn)
    }


def every_row(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    """Every row of every table in schema conveyor, as JSON text."""
    tables = [
        name
        for (name,) in conn.execute(
            "select relname::text from pg_class where relnamespace = 'conveyor'::regnamespace "
            "and relkind in ('r', 'p') order by 1"
        )
    ]
    return {
        table: {
            text
            for (text,) in conn.execute(
                sql.SQL("select to_jsonb(t)::text from conveyor.{} t").format(sql.Identifier(table))
            )
        }
        for table in tables
    }
