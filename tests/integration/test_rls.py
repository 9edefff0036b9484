"""User-facing reads run under Supabase's `authenticated` role, so RLS decides what is visible."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from conveyor.auth.tenancy import grant_admin, record_audit
from conveyor.db import Database
from conveyor.errors import RunNotFound
from conveyor.events.run_events import EventPublisher
from conveyor.runs import views
from conveyor.runs.execution import execute_run
from conveyor.settings import Settings
from tests.support import new_run


def claims(user: uuid.UUID) -> dict[str, str]:
    return {"sub": str(user), "role": "authenticated"}


@pytest.fixture
def owner_run(db: Database, redis_url: str, settings: Settings) -> tuple[uuid.UUID, uuid.UUID]:
    owner = uuid.uuid4()
    run = new_run(db, "echo", user_id=owner)
    publisher = EventPublisher(redis_url)
    execute_run(db, publisher, settings, run.id)
    publisher.close()
    return owner, run.id


@pytest.mark.parametrize("table", ["workflow_runs", "workflow_steps", "run_events"])
def test_owner_sees_own_rows(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID], table: str
) -> None:
    owner, _ = owner_run
    with db.user_transaction(claims(owner)) as conn:
        count = conn.execute(f"select count(*) as n from {table}").fetchone()  # noqa: S608
    assert count is not None
    assert count["n"] > 0


@pytest.mark.parametrize("table", ["workflow_runs", "workflow_steps", "run_events"])
def test_another_user_sees_no_rows(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID], table: str
) -> None:
    with db.user_transaction(claims(uuid.uuid4())) as conn:
        count = conn.execute(f"select count(*) as n from {table}").fetchone()  # noqa: S608
    assert count == {"n": 0}


def test_users_cannot_write_runs_directly(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID]
) -> None:
    owner, run_id = owner_run
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        db.user_transaction(claims(owner)) as conn,
    ):
        conn.execute("update workflow_runs set status = 'queued' where id = %s", (run_id,))


def test_get_run_hides_another_users_run(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID]
) -> None:
    _, run_id = owner_run
    with pytest.raises(RunNotFound):
        views.get_run(db, claims(uuid.uuid4()), run_id)


def test_admin_claims_see_everyones_runs_under_rls(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID]
) -> None:
    admin_claims = {**claims(uuid.uuid4()), "app_metadata": {"role": "admin"}}
    with db.user_transaction(admin_claims) as conn:
        count = conn.execute("select count(*) as n from workflow_runs").fetchone()
    assert count == {"n": 1}


def test_user_roles_admin_sees_everyones_runs_under_rls(
    db: Database, owner_run: tuple[uuid.UUID, uuid.UUID]
) -> None:
    admin = uuid.uuid4()
    grant_admin(db, admin)
    with db.user_transaction(claims(admin)) as conn:
        count = conn.execute("select count(*) as n from workflow_runs").fetchone()
    assert count == {"n": 1}


def test_users_cannot_read_the_audit_log_or_roles_of_others(db: Database) -> None:
    other = uuid.uuid4()
    grant_admin(db, other)
    record_audit(db, action="auth.exchange", outcome="success", actor_user_id=other)
    with db.user_transaction(claims(uuid.uuid4())) as conn:
        assert conn.execute("select count(*) as n from audit_logs").fetchone() == {"n": 0}
        assert conn.execute("select count(*) as n from user_roles").fetchone() == {"n": 0}
