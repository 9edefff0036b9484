"""Agent sessions over HTTP: owners create and read them, strangers see nothing, messages are
numbered 1..n without gaps even when posted concurrently."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support import ApiClient, token_for

ClientFactory = Callable[..., ApiClient]


def create_session(client: ApiClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/agent/sessions", json={"agent_mode": "chat", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def post_message(client: ApiClient, session_id: str, content: str) -> dict[str, Any]:
    response = client.post(
        f"/api/agent/sessions/{session_id}/messages", json={"role": "user", "content": content}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def messages(client: ApiClient, session_id: str, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/api/agent/sessions/{session_id}/messages?{query}")
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["messages"]
    return listed


def test_a_created_session_can_be_read_back(client: ApiClient, user_id: uuid.UUID) -> None:
    """POST answers 201 with the session, and GET returns the same session."""
    created = create_session(client, project_name="conveyor", project_path="/src/conveyor")
    assert created["user_id"] == str(user_id)
    assert created["agent_mode"] == "chat"
    assert created["last_sequence_number"] == 0
    fetched = client.get(f"/api/agent/sessions/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


def test_own_sessions_are_listed_newest_first_with_a_cursor(
    client: ApiClient, make_client: ClientFactory
) -> None:
    """The listing shows only the caller's sessions, newest first, a page at a time."""
    create_session(make_client())
    ids = [create_session(client)["id"] for _ in range(3)]
    first = client.get("/api/agent/sessions?limit=2").json()
    assert [s["id"] for s in first["sessions"]] == ids[::-1][:2]
    second = client.get(f"/api/agent/sessions?limit=2&cursor={first['next_cursor']}").json()
    assert [s["id"] for s in second["sessions"]] == [ids[0]]
    assert second["next_cursor"] is None


def test_a_stranger_gets_404_for_someone_elses_session(
    client: ApiClient, make_client: ClientFactory
) -> None:
    """Reading, listing messages of and posting to another user's session all answer 404."""
    session_id = create_session(client)["id"]
    stranger = make_client()
    responses = [
        stranger.get(f"/api/agent/sessions/{session_id}"),
        stranger.get(f"/api/agent/sessions/{session_id}/messages"),
        stranger.post(
            f"/api/agent/sessions/{session_id}/messages", json={"role": "user", "content": "hi"}
        ),
    ]
    assert [(r.status_code, r.json()["code"]) for r in responses] == [
        (404, "SESSION_NOT_FOUND")
    ] * 3
    assert messages(client, session_id) == []


def test_an_admin_reads_anyones_session_and_messages(
    client: ApiClient, make_client: ClientFactory
) -> None:
    """RLS lets an admin see every session and its messages."""
    session_id = create_session(client)["id"]
    post_message(client, session_id, "hello")
    admin = make_client(token=token_for(uuid.uuid4(), admin=True))
    assert admin.get(f"/api/agent/sessions/{session_id}").status_code == 200
    assert [m["content"] for m in messages(admin, session_id)] == ["hello"]


def test_a_session_id_that_is_not_a_uuid_is_404(client: ApiClient) -> None:
    """A malformed id cannot name a session, so it is not found rather than a 500."""
    response = client.get("/api/agent/sessions/not-a-uuid")
    assert response.status_code == 404
    assert response.json()["code"] == "SESSION_NOT_FOUND"


def test_a_session_without_agent_mode_is_400_naming_the_field(client: ApiClient) -> None:
    """A missing agent_mode is refused with INVALID_INPUT naming it."""
    response = client.post("/api/agent/sessions", json={"project_name": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["agent_mode"]


def test_a_message_with_an_unknown_role_is_400_naming_the_field(client: ApiClient) -> None:
    """A role outside user/assistant/system/tool is refused with INVALID_INPUT naming it."""
    session_id = create_session(client)["id"]
    response = client.post(
        f"/api/agent/sessions/{session_id}/messages", json={"role": "robot", "content": "beep"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["role"]
    assert messages(client, session_id) == []


def test_bad_message_list_parameters_are_400(client: ApiClient) -> None:
    """Out-of-range or unknown query parameters are refused."""
    session_id = create_session(client)["id"]
    for query in ("since=-1", "limit=0", "limit=1000", "colour=red"):
        response = client.get(f"/api/agent/sessions/{session_id}/messages?{query}")
        assert response.status_code == 400, query
        assert response.json()["code"] == "INVALID_INPUT"


def test_messages_come_back_in_order_numbered_from_one(client: ApiClient) -> None:
    """Messages keep their content verbatim and are numbered 1..n in the order they were posted."""
    session_id = create_session(client)["id"]
    contents = ["first", "  indented\n", "third"]
    posted = [post_message(client, session_id, content) for content in contents]
    assert [m["sequence_number"] for m in posted] == [1, 2, 3]
    listed = messages(client, session_id)
    assert [(m["sequence_number"], m["content"]) for m in listed] == [
        (1, "first"),
        (2, "  indented\n"),
        (3, "third"),
    ]
    assert listed == posted
    assert client.get(f"/api/agent/sessions/{session_id}").json()["last_sequence_number"] == 3


def test_concurrent_posts_get_sequence_numbers_without_gaps_or_duplicates(
    make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """24 messages posted from 8 threads at once are numbered exactly 1..24."""
    threads, per_thread = 8, 3
    session_id = create_session(make_client(user_id))["id"]
    start = threading.Barrier(threads)

    def post_batch(worker: int) -> list[int]:
        client = make_client(user_id)  # requests sessions are not shared across threads
        start.wait(timeout=10)
        return [
            post_message(client, session_id, f"{worker}-{i}")["sequence_number"]
            for i in range(per_thread)
        ]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        numbers = [n for batch in pool.map(post_batch, range(threads)) for n in batch]

    total = threads * per_thread
    assert sorted(numbers) == list(range(1, total + 1))
    listed = messages(make_client(user_id), session_id)
    assert [m["sequence_number"] for m in listed] == list(range(1, total + 1))
    assert len({m["content"] for m in listed}) == total


def test_since_returns_only_later_messages(client: ApiClient) -> None:
    """`?since=n` answers the messages numbered after n."""
    session_id = create_session(client)["id"]
    for content in ("a", "b", "c", "d"):
        post_message(client, session_id, content)
    assert [m["content"] for m in messages(client, session_id, "since=2")] == ["c", "d"]
    assert [m["content"] for m in messages(client, session_id, "since=1&limit=1")] == ["b"]
    assert messages(client, session_id, "since=4") == []
