"""With Postgres unreachable the API answers 503 with a Retry-After, never a 500, and serves
again by itself once Postgres is back."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from conveyor.cli.services import free_port
from conveyor.db import sql_connection
from tests.support import ApiClient, LiveServer, make_settings, token_for


def unreachable_postgres() -> str:
    """A URL of a Postgres that does not exist: nothing listens on the port."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/conveyor"


def test_a_read_while_postgres_is_unreachable_answers_503_json_with_retry_after(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(unreachable_postgres(), redis_url, tmp_path / "data")
    with LiveServer(settings) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))

        response = client.get(f"/api/runs/{uuid.uuid4()}", timeout=20)

    assert response.status_code == 503
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) >= 1


def test_a_submit_while_postgres_is_unreachable_answers_503_json_with_retry_after(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(unreachable_postgres(), redis_url, tmp_path / "data")
    with LiveServer(settings) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))

        response = client.post(
            "/api/agents/invoke", json={"agent_type": "echo", "input": {}}, timeout=20
        )

    assert response.status_code == 503
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) >= 1


def test_the_api_serves_again_after_postgres_dropped_every_session(
    client: ApiClient, database_url: str, pg_admin_url: str
) -> None:
    """What a Postgres restart does to the pool: its connections die; the next request gets a
    fresh one rather than an error."""
    assert client.get("/api/runs").status_code == 200
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        ended = admin.execute(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity "
            "where datname = %s and pid <> pg_backend_pid()) terminated",
            (conninfo_to_dict(database_url)["dbname"],),
        ).fetchone()
    assert ended is not None
    assert ended[0] >= 1, "the app held no connection to drop"

    assert client.get("/api/runs").status_code == 200


def test_a_request_stuck_behind_a_row_lock_answers_503_once_the_statement_timeout_passes(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A transaction left holding the run's row (a stuck session, a long migration) costs the
    caller one statement timeout and a 503 to retry, not a request that hangs."""
    settings = make_settings(
        database_url, redis_url, tmp_path / "data", database_statement_timeout_seconds=0.5
    )
    with LiveServer(settings) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))
        run_id = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}}).json()[
            "request_id"
        ]
        with sql_connection(database_url) as locker:
            locker.execute("select 1 from workflow_runs where id = %s for update", (run_id,))

            stuck = client.post(f"/api/runs/{run_id}/cancel", timeout=20)

        retried = client.post(f"/api/runs/{run_id}/cancel", timeout=20)

    assert stuck.status_code == 503
    assert stuck.json()["code"] == "SERVICE_UNAVAILABLE"
    assert int(stuck.headers["Retry-After"]) >= 1
    assert retried.status_code == 200
    assert retried.json()["status"] == "cancelled"
