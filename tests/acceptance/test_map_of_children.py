"""A map whose items are child workflows: one child run per item for the same user, each item
waiting for its child without a worker, the outputs in input order; a failed child fails its
item; the parent waits (no worker, no lease) while only children are left; cancelling the
parent cancels them."""

from __future__ import annotations

from typing import Any

import tests.child_workflows_for_tests  # noqa: F401 - registers the workflows used here
from tests.acceptance.durable_waits_calls import WAITING, signal_run, submit
from tests.support import ApiClient, wait_for_run, wait_until


def test_each_item_is_a_child_run_and_the_outputs_keep_input_order(
    worker: Any, client: ApiClient
) -> None:
    run_id = submit(client, "map_of_children", {"child": "child_double", "numbers": [3, 1, 2]})

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    assert view["output"] == {
        "items": [{"doubled": 6}, {"doubled": 2}, {"doubled": 4}],
        "failed": [],
    }
    assert sorted(c["workflow_id"] for c in view["children"]) == ["child_double"] * 3
    assert {c["status"] for c in view["children"]} == {"completed"}
    assert {c["parent_step"] for c in view["children"]} == {0}


def test_a_failed_child_is_a_failed_item_a_collecting_map_lists(
    worker: Any, client: ApiClient
) -> None:
    run_id = submit(client, "map_of_children_collect", {"child": "child_refuses", "numbers": [1]})

    view = wait_for_run(client, run_id, timeout=60)

    assert view["status"] == "completed", view
    [failed] = view["output"]["failed"]
    assert failed["index"] == 0
    assert failed["error_code"] == "CHILD_FAILED"
    assert view["output"]["items"] == [None]


def test_the_parent_waits_without_a_worker_while_only_children_are_left(
    worker: Any, client: ApiClient
) -> None:
    run_id = submit(client, "map_of_children", {"child": "child_waits_for_go", "numbers": [7, 8]})

    parked = wait_for_run(client, run_id, until=WAITING, timeout=30)
    children = {c["id"]: c for c in parked["children"]}
    for child in children:
        wait_for_run(client, child, until=WAITING, timeout=30)
    items = client.get(f"/api/runs/{run_id}/items").json()["items"]
    assert [item["status"] for item in items] == ["waiting", "waiting"]

    for child, n in zip(
        sorted(children, key=lambda c: children[c]["created_at"]), (7, 8), strict=True
    ):
        assert (
            signal_run(client, child, {"match": str(n), "payload": {"n": n}}, "go").status_code
            == 200
        )

    done = wait_for_run(client, run_id, timeout=60)
    assert done["status"] == "completed", done
    assert sorted(item["n"] for item in done["output"]["items"]) == [7, 8]


def test_cancelling_the_parent_cancels_its_item_children(worker: Any, client: ApiClient) -> None:
    run_id = submit(client, "map_of_children", {"child": "child_waits_for_go", "numbers": [1, 2]})
    wait_for_run(client, run_id, until=WAITING, timeout=30)
    children = [c["id"] for c in client.get(f"/api/runs/{run_id}").json()["children"]]

    answer = client.post(f"/api/runs/{run_id}/cancel")

    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    wait_until(
        lambda: all(client.get(f"/api/runs/{c}").json()["status"] == "cancelled" for c in children),
        10,
        "the children cancelled",
    )
    items = client.get(f"/api/runs/{run_id}/items").json()["items"]
    assert {item["status"] for item in items} == {"cancelled"}


def test_a_failed_child_fails_the_map_fast_without_waiting_for_the_others(
    worker: Any, client: ApiClient
) -> None:
    numbers = {"child": "child_fails_one_or_waits", "numbers": [2, 1]}
    run_id = submit(client, "map_of_children", numbers)

    view = wait_for_run(client, run_id, timeout=30)

    assert view["status"] == "failed", view
    assert view["error_code"] == "CHILD_FAILED"
    items = client.get(f"/api/runs/{run_id}/items").json()["items"]
    assert [item["status"] for item in items] == ["cancelled", "failed"]


def test_cancelling_the_last_child_of_a_collecting_map_lets_the_parent_go_on_at_once(
    worker: Any, client: ApiClient
) -> None:
    numbers = {"child": "child_waits_for_go", "numbers": [5]}
    run_id = submit(client, "map_of_children_collect", numbers)
    wait_for_run(client, run_id, until=WAITING, timeout=30)
    [child] = [c["id"] for c in client.get(f"/api/runs/{run_id}").json()["children"]]

    assert client.post(f"/api/runs/{child}/cancel").status_code == 200
    view = wait_for_run(client, run_id, timeout=15)

    assert view["status"] == "completed", view
    assert [f["error_code"] for f in view["output"]["failed"]] == ["CHILD_CANCELLED"]
