"""Conveyor's connections name its tables plainly and always reach schema conveyor, never a host
app's table of the same name in `public`."""

from __future__ import annotations

import psycopg

from conveyor.db import Database, ensure_search_path, sql_connection


def host_app_with_a_user_roles_table(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("create table public.user_roles (id int, note text)")
        conn.execute("insert into public.user_roles values (1, 'the host app''s row')")


def test_pooled_connections_read_conveyors_table_not_the_hosts(database_url: str) -> None:
    host_app_with_a_user_roles_table(database_url)
    db = Database(database_url, max_size=1)
    try:
        with db.transaction() as conn:
            row = conn.execute("select current_schema() as s, count(*) as n from user_roles")
            assert row.fetchone() == {"s": "conveyor", "n": 0}
    finally:
        db.close()


def test_a_session_whose_startup_options_a_pooler_dropped_is_put_on_conveyors_schema(
    database_url: str,
) -> None:
    host_app_with_a_user_roles_table(database_url)
    # A plain connection stands for one whose `options` a pooler did not pass on.
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select current_schema()").fetchone() == ("public",)
        ensure_search_path(conn)
        assert conn.execute("select current_schema(), count(*) from user_roles").fetchone() == (
            "conveyor",
            0,
        )


def test_one_off_connections_use_conveyors_schema(database_url: str) -> None:
    host_app_with_a_user_roles_table(database_url)
    with sql_connection(database_url) as conn:
        assert conn.execute("select count(*) from user_roles").fetchone() == (0,)
