"""Keyset pagination, newest first: every listing pages by (timestamp, id) the same way."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import sql
from pydantic import Field

from conveyor.db import Connection
from conveyor.errors import InvalidInput
from conveyor.payload import Payload

IdType = Literal["uuid", "bigint", "text"]


class PageQuery(Payload):
    """`?limit=&cursor=` of a newest-first listing."""

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


def encode_cursor(at: datetime, row_id: object) -> str:
    """An opaque cursor pointing just past (at, id)."""
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, id_type: IdType = "uuid") -> tuple[datetime, UUID | int | str]:
    """The (at, id) a cursor points past, or InvalidInput."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, _, row_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        parsed: UUID | int | str = (
            UUID(row_id) if id_type == "uuid" else int(row_id) if id_type == "bigint" else row_id
        )
        return datetime.fromisoformat(at), parsed
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned; start without it.") from exc


def newest_first(
    conn: Connection,
    *,
    table: str,
    columns: str,
    time_column: str,
    id_type: IdType,
    where: str,
    params: dict[str, Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `table` rows matching `where` (SQL with %(name)s parameters), newest first by
    (time_column, id), and the cursor of the next page (None at the end).
    table, columns, time_column and where are constants of the caller, never client input."""
    after = decode_cursor(cursor, id_type) if cursor else None
    query = sql.SQL(
        """
        select {columns} from {table}
         where ({where})
           and (%(after_ts)s::timestamptz is null
                or ({time}, id) < (%(after_ts)s, %(after_id)s::{id_type}))
         order by {time} desc, id desc
         limit %(limit)s
        """
    ).format(
        columns=sql.SQL(columns),
        table=sql.SQL(table),
        where=sql.SQL(where),
        time=sql.Identifier(time_column),
        id_type=sql.SQL(id_type),
    )
    rows = conn.execute(
        query,
        {
            **params,
            "after_ts": after[0] if after else None,
            "after_id": str(after[1]) if after else None,
            "limit": limit + 1,
        },
    ).fetchall()
    page = rows[:limit]
    more = len(rows) > limit
    return page, encode_cursor(page[-1][time_column], page[-1]["id"]) if more else None
