"""Listing the caller's own rows, newest first, the same way on every endpoint."""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

from flask import Response, jsonify
from pydantic import BaseModel

from conveyor.db import Database
from conveyor.pagination import PageQuery
from web.body import parse_query
from web.context import get_db, get_principal


class OwnRowsLister(Protocol):
    """A domain listing of one user's rows under RLS: (page, next cursor)."""

    def __call__(
        self,
        db: Database,
        claims: dict[str, Any],
        *,
        user_id: UUID,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Any], str | None]: ...


def own_page(key: str, lister: OwnRowsLister) -> Response:
    """`{key: [...], next_cursor}` for `?limit=&cursor=`: the caller's rows, newest first."""
    query = parse_query(PageQuery)
    principal = get_principal()
    rows, next_cursor = lister(
        get_db(),
        principal.rls_claims(),
        user_id=principal.require_user(),
        limit=query.limit,
        cursor=query.cursor,
    )
    items: list[BaseModel] = rows
    return jsonify({key: [r.model_dump(mode="json") for r in items], "next_cursor": next_cursor})
