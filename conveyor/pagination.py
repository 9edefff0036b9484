"""Keyset pagination, newest first: every listing pages by (timestamp, id) the same way."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from psycopg import sql
from pydantic import Field

from conveyor.db import Connection, Database
from conveyor.errors import InvalidInput
from conveyor.payload import Payload

IdType = Literal["uuid", "bigint", "text"]
View = TypeVar("View")


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


@dataclass(frozen=True)
class Listing:
    """A newest-first listing of one table. Its fields are constants of the caller, never client
    input: `where` is SQL with %(name)s parameters, and rows page by (time_column, id)."""

    table: str
    columns: str
    time_column: str
    id_type: IdType
    where: str


def newest_first(
    conn: Connection,
    listing: Listing,
    *,
    params: dict[str, Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the listing's rows, newest first, and the cursor of the next page (None at
    the end)."""
    after = decode_cursor(cursor, listing.id_type) if cursor else None
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
        columns=sql.SQL(listing.columns),
        table=sql.SQL(listing.table),
        where=sql.SQL(listing.where),
        time=sql.Identifier(listing.time_column),
        id_type=sql.SQL(listing.id_type),
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
    return page, encode_cursor(page[-1][listing.time_column], page[-1]["id"]) if more else None


def user_page(
    db: Database,
    claims: dict[str, Any],
    listing: Listing,
    view: Callable[[dict[str, Any]], View],
    *,
    params: dict[str, Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[View], str | None]:
    """One page of the listing as the caller (claims) may see it under RLS, each row made into a
    view, and the next page's cursor."""
    with db.user_transaction(claims) as conn:
        rows, next_cursor = newest_first(conn, listing, params=params, limit=limit, cursor=cursor)
    return [view(row) for row in rows], next_cursor
