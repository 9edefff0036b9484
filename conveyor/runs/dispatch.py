"""Held runs (a concurrency key or a priority): which to publish now, and what is waiting.
The choice is conveyor_dispatch_runs (sql/20261207002800_dispatch.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from conveyor.db import Connection, Database
from conveyor.errors import InvalidInput
from conveyor.workflows.definitions import ConcurrencySpec, DebounceSpec, SingletonSpec
from conveyor.workflows.templates import TemplateFailure, render


@dataclass(frozen=True)
class Hold:
    """How a new run is held for dispatch: its rendered key, limit and priority; a singleton
    policy or a debounce delay (their keys are concurrency keys `singleton:` / `debounce:`)."""

    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    priority: int | None = None
    singleton: str | None = None
    debounce_seconds: float | None = None


def render_key(field: str, template: str, context: dict[str, Any]) -> str:
    """A key template rendered with the submit's context; InvalidInput when it fails or is empty."""
    try:
        key = render(template, context)
    except TemplateFailure as exc:
        raise InvalidInput(f"{field}.key could not be rendered: {exc}") from exc
    if key is None or str(key).strip() == "":
        raise InvalidInput(f"{field}.key rendered to an empty key.")
    return str(key)[:500]


def hold_for(
    concurrency: ConcurrencySpec | None,
    priority: int | None,
    context: dict[str, Any],
    singleton: SingletonSpec | None = None,
    debounce: DebounceSpec | None = None,
) -> Hold | None:
    """The hold of a run declaring these (None: published at once); keys are rendered with the
    submit's context. InvalidInput when they do not render or more than one key is given."""
    if sum(spec is not None for spec in (concurrency, singleton, debounce)) > 1:
        raise InvalidInput("Give at most one of concurrency, singleton and debounce.")
    if singleton is not None:
        key = render_key("singleton", singleton.key, context)
        return Hold(f"singleton:{key}", 1, priority, singleton=singleton.policy)
    if debounce is not None:
        key = render_key("debounce", debounce.key, context)
        return Hold(f"debounce:{key}", 10_000, priority, debounce_seconds=debounce.seconds)
    if concurrency is not None:
        key = render_key("concurrency", concurrency.key, context)
        return Hold(key, concurrency.limit, priority)
    if priority is not None:
        return Hold(priority=priority)
    return None


# What a user (not a service or an admin) may give in a submit body: keys scoped to them, used
# literally, and a priority no higher than the definition's (or the default's).
DEFAULT_PRIORITY = 5
FlowSpec = TypeVar("FlowSpec", ConcurrencySpec, SingletonSpec, DebounceSpec)


def scoped_to_user(owner: UUID, spec: FlowSpec | None) -> FlowSpec | None:
    """A key a user gave in a submit body: literal (a template is InvalidInput: it would run the
    user's Jinja in the web process) and prefixed with the user's id, so it can neither reach
    another user's runs (a singleton `replace` cancels them) nor take their slots."""
    if spec is None:
        return None
    if any(mark in spec.key for mark in ("{{", "{%", "{#")):
        raise InvalidInput(
            "A key in a submit body is literal: give its value (e.g. the session's id), not a "
            "template; keys are already scoped to you."
        )
    return spec.model_copy(update={"key": f"user:{owner}:{spec.key}"})


def capped_priority(given: int | None, declared: int | None) -> int | None:
    """A user's priority: lowered freely, raised at most to the definition's (or the default)."""
    if given is None:
        return declared
    return min(given, declared if declared is not None else DEFAULT_PRIORITY)


def dispatch_in(conn: Connection, window: int) -> list[UUID]:
    """In the caller's transaction: mark the held runs to publish now and return them."""
    rows = conn.execute(
        "select conveyor_dispatch_runs as id from conveyor_dispatch_runs(%s)", (window,)
    ).fetchall()
    return [row["id"] for row in rows]


def dispatch_runs(db: Database, window: int) -> list[UUID]:
    """Mark the held runs to publish now (committed) and return them; publish after this."""
    with db.transaction() as conn:
        return dispatch_in(conn, window)


@dataclass(frozen=True)
class KeyQueue:
    """A concurrency key with runs held: how many, its limit and its runs in flight."""

    key: str
    held: int
    limit: int | None
    in_flight: int


def queued_by_key(db: Database, limit: int = 50) -> list[KeyQueue]:
    """Held runs by key (most held first) with the key's limit and runs in flight."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            select h.k as key, h.held, h.lim,
                   (select count(*) from workflow_runs f
                     where f.concurrency_key = h.k and f.dispatched_at is not null
                       and f.status in ('queued', 'running', 'waiting')) as in_flight
              from (select concurrency_key as k, count(*) as held, min(concurrency_limit) as lim
                      from workflow_runs
                     where status = 'queued' and dispatched_at is null
                       and concurrency_key is not null
                     group by concurrency_key) h
             order by h.held desc, h.k
             limit %s
            """,
            (limit,),
        ).fetchall()
    return [KeyQueue(r["key"], r["held"], r["lim"], r["in_flight"]) for r in rows]
