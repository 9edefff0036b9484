"""Who may see and do what over HTTP: owners, strangers, admins, backend and service tokens."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from conveyor.auth.tenancy import grant_admin
from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database, sql_connection
from tests.support import API_SECRET, ApiClient, token_for

ClientFactory = Callable[..., ApiClient]


def submit(client: ApiClient) -> str:
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["request_id"]
    return run_id


def audit_rows(database_url: str, action: str) -> list[tuple[Any, ...]]:
    with sql_connection(database_url) as conn:
        return conn.execute(
            "select outcome, actor_user_id, host(ip), user_agent from audit_logs where action = %s "
            "order by id",
            (action,),
        ).fetchall()


def test_exchange_returns_a_backend_token_accepted_by_other_endpoints(
    make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    exchanged = make_client(user_id).post("/api/auth/exchange-token")
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["user_id"] == str(user_id)
    assert uuid.UUID(body["tenant_id"])
    assert body["expires_in"] == 7 * 24 * 3600

    backend = make_client(token=body["backend_token"])
    run_id = submit(backend)
    assert backend.get(f"/api/runs/{run_id}").status_code == 200


def test_a_user_keeps_one_personal_tenant_across_exchanges(
    make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    client = make_client(user_id)
    first = client.post("/api/auth/exchange-token").json()["tenant_id"]
    second = client.post("/api/auth/exchange-token").json()["tenant_id"]
    assert first == second


def test_exchange_attempts_are_audited_with_ip_and_user_agent(
    make_client: ClientFactory, user_id: uuid.UUID, database_url: str
) -> None:
    make_client(user_id).post("/api/auth/exchange-token", headers={"User-Agent": "spec/1"})
    bad = make_client(token="not-a-token").post("/api/auth/exchange-token")
    assert bad.status_code == 401
    assert bad.json()["code"] == "INVALID_TOKEN"
    rows = audit_rows(database_url, "auth.exchange")
    assert rows[0] == ("success", user_id, "127.0.0.1", "spec/1")
    assert rows[1][:3] == ("failure", None, "127.0.0.1")
    assert len(rows) == 2


def test_a_backend_token_cannot_be_exchanged_again(make_client: ClientFactory) -> None:
    backend_token = make_client().post("/api/auth/exchange-token").json()["backend_token"]
    response = make_client(token=backend_token).post("/api/auth/exchange-token")
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


def test_user_a_cannot_read_list_or_cancel_user_bs_runs(make_client: ClientFactory) -> None:
    owner, stranger = make_client(), make_client()
    run_id = submit(owner)

    assert stranger.get(f"/api/runs/{run_id}").status_code == 404
    cancel = stranger.post(f"/api/runs/{run_id}/cancel")
    assert cancel.status_code == 404
    assert cancel.json()["code"] == "RUN_NOT_FOUND"
    assert stranger.get("/api/runs").json()["runs"] == []
    assert owner.get(f"/api/runs/{run_id}").json()["status"] == "queued"


def test_listing_another_users_runs_needs_admin(make_client: ClientFactory) -> None:
    response = make_client().get(f"/api/runs?user_id={uuid.uuid4()}")
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


def test_admin_by_claim_reads_lists_and_cancels_anyones_run_and_is_audited(
    make_client: ClientFactory, database_url: str
) -> None:
    owner_id = uuid.uuid4()
    admin_id = uuid.uuid4()
    run_id = submit(make_client(owner_id))
    admin = make_client(token=token_for(admin_id, admin=True))

    assert admin.get(f"/api/runs/{run_id}").status_code == 200
    listed = admin.get(f"/api/runs?user_id={owner_id}").json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    cancelled = admin.post(f"/api/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert [row[:2] for row in audit_rows(database_url, "admin.run.cancel")] == [
        ("success", admin_id)
    ]


def test_admin_by_user_roles_table_reads_anyones_run(
    make_client: ClientFactory, db: Database
) -> None:
    run_id = submit(make_client())
    admin_id = uuid.uuid4()
    grant_admin(db, admin_id)
    assert make_client(admin_id).get(f"/api/runs/{run_id}").status_code == 200


def test_admin_only_endpoint_answers_403_forbidden_to_users(make_client: ClientFactory) -> None:
    response = make_client().get("/api/admin/audit-logs")
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


def test_admin_reads_the_audit_log(make_client: ClientFactory) -> None:
    make_client().post("/api/auth/exchange-token")
    admin = make_client(token=token_for(uuid.uuid4(), admin=True))
    entries = admin.get("/api/admin/audit-logs").json()["entries"]
    assert entries[0]["action"] == "auth.exchange"


def test_service_token_cannot_act_as_a_user(make_client: ClientFactory) -> None:
    service = make_client(token=mint_service_token("billing", ["usage:write"], secret=API_SECRET))
    response = service.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}})
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


def test_cancelling_a_queued_run_cancels_it_at_once(client: ApiClient) -> None:
    run_id = submit(client)
    response = client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancel_requested_at"] is not None


def test_cancelling_a_finished_run_is_409(client: ApiClient) -> None:
    run_id = submit(client)
    client.post(f"/api/runs/{run_id}/cancel")
    again = client.post(f"/api/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "RUN_ALREADY_FINISHED"


def test_runs_are_listed_newest_first_with_a_cursor(client: ApiClient) -> None:
    ids = [submit(client) for _ in range(3)]
    first = client.get("/api/runs?limit=2").json()
    assert [r["id"] for r in first["runs"]] == ids[::-1][:2]
    second = client.get(f"/api/runs?limit=2&cursor={first['next_cursor']}").json()
    assert [r["id"] for r in second["runs"]] == [ids[0]]
    assert second["next_cursor"] is None


def test_runs_can_be_filtered_by_status(client: ApiClient) -> None:
    kept, cancelled = submit(client), submit(client)
    client.post(f"/api/runs/{cancelled}/cancel")
    listed = client.get("/api/runs?status=queued").json()["runs"]
    assert [r["id"] for r in listed] == [kept]


def test_bad_list_parameters_are_400(client: ApiClient) -> None:
    for query in ("limit=0", "limit=1000", "status=nope", "cursor=%%%", "colour=red"):
        response = client.get(f"/api/runs?{query}")
        assert response.status_code == 400, query
        assert response.json()["code"] == "INVALID_INPUT"
