"""What seed 003's views share: request bodies read as Django REST framework reads them, and
bounded JSON arrays (`?limit=&offset=`, the names of DRF's LimitOffsetPagination) with a `Link`
header to the next page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import urlencode

from flask import Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

# The document returns whole lists; a page is capped so no call reads a table without bound.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000

View = TypeVar("View", bound=Callable[..., object])


class DjangoBody(BaseModel):
    """A seed 003 request body: unknown fields are ignored, as DRF serializers ignore them."""

    model_config = ConfigDict(extra="ignore")


class ArrayQuery(BaseModel):
    """`?limit=&offset=` of a listing answered as a bare JSON array, in a stable order."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


def next_link(**params: int) -> str:
    """A `Link` header value pointing at this path with params replacing its query's."""
    query = request.args.to_dict() | {name: str(value) for name, value in params.items()}
    return f'<{request.base_url}?{urlencode(query)}>; rel="next"'


def array(items: Sequence[BaseModel], query: ArrayQuery) -> Response:
    """The page as a JSON array; a full page says where the next one is (`Link: <...>;
    rel="next"`), so a client that wants everything can follow it."""
    response = jsonify([item.model_dump(mode="json") for item in items])
    if len(items) == query.limit:
        response.headers["Link"] = next_link(limit=query.limit, offset=query.offset + query.limit)
    return response


def uncounted(view: View) -> View:
    """Keep a view out of the daily request count (the health check: monitors poll it)."""
    view.conveyor_uncounted = True  # type: ignore[attr-defined]
    return view
