"""Subscription state from Stripe events: what a subscription is now, whatever order its events
arrive in.

An event newer than the stored state is applied. One that ties with it (Stripe stamps events to
the second) or is older and disagrees with it says nothing certain about the order of the two
states, so the subscription is read again from Stripe's API, as Stripe advises, and what Stripe
says now is stored. Without an API key the database decides: older loses, a tie goes by status
(`conveyor_subscription_tie_rank`: never from paying back to incomplete or unpaid).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from conveyor.billing.event_context import (
    META_PLAN,
    EventContext,
    EventFailure,
    Outcome,
    asking_stripe,
    plan_for_price,
    resolve_user,
)
from conveyor.billing.stripe_api import retrieve_subscription
from conveyor.billing.stripe_objects import object_id, subscription_period, subscription_price

log = structlog.get_logger(__name__)

# Stripe never moves a subscription out of these: a stored final state is never re-read.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})


@dataclass(frozen=True)
class SubscriptionState:
    """What an event (or Stripe's API) says a subscription is."""

    subscription: str
    customer: str | None
    price: str | None
    plan: str
    status: str
    period: tuple[datetime | None, datetime | None]
    cancel_at_period_end: bool


def subscription_changed(context: EventContext) -> Outcome:
    """customer.subscription.created / updated / deleted: store the subscription's state, then
    set the user's plan from their live subscriptions."""
    subscription = context.obj
    user = resolve_user(context, subscription)
    return store_state(context, user, state_of(context, subscription))


def state_of(context: EventContext, subscription: dict[str, Any]) -> SubscriptionState:
    """A Subscription object's state, its plan from the catalogue (or from our metadata when it
    has no price)."""
    price = subscription_price(subscription)
    metadata = subscription.get("metadata") or {}
    plan = metadata.get(META_PLAN) if price is None else plan_for_price(context, price)
    if plan is None:
        raise EventFailure(f"subscription {subscription['id']} has no price Conveyor sells")
    return SubscriptionState(
        subscription=subscription["id"],
        customer=object_id(subscription.get("customer")),
        price=price,
        plan=plan,
        status=subscription["status"],
        period=subscription_period(subscription),
        cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
    )


def store_state(context: EventContext, user: UUID, state: SubscriptionState) -> Outcome:
    """Store this event's state if it is newer than the stored one, else (tied or older, and
    disagreeing) what Stripe's API says now; PROCESSED if a state was stored, else SKIPPED."""
    # Events of one subscription are decided one at a time, also when no row exists yet, so
    # what is read below is still stored when the answer is written.
    context.conn.execute(
        "select pg_advisory_xact_lock(hashtextextended('conveyor.stripe_subscription:' || %s, 0))",
        (state.subscription,),
    )
    stored = context.conn.execute(
        "select status, plan_id, cancel_at_period_end, state_at from user_subscriptions "
        "where stripe_subscription_id = %s",
        (state.subscription,),
    ).fetchone()
    if stored is None or context.created > stored["state_at"]:
        return applied(context, user, state, context.created, from_stripe=False)
    agrees = (stored["status"], stored["plan_id"], stored["cancel_at_period_end"]) == (
        state.status,
        state.plan,
        state.cancel_at_period_end,
    )
    if agrees or stored["status"] in FINAL_STATUSES:
        return Outcome.SKIPPED
    if not context.can_ask_stripe:
        # No way to ask: the database decides deterministically. An older state loses; a tie
        # goes to the status further along (conveyor_subscription_tie_rank), so a paying user is
        # never sent back to incomplete or unpaid by a state their subscription already left.
        return applied(context, user, state, context.created, from_stripe=False)
    with asking_stripe(f"reading subscription {state.subscription} from Stripe"):
        current = retrieve_subscription(context.settings, state.subscription)
    log.info(
        "stripe_subscription_reread",
        subscription=state.subscription,
        event_status=state.status,
        stored_status=stored["status"],
        stripe_status=current.get("status"),
    )
    # Stamped with the stored time, not now: an event Stripe creates after this still applies,
    # and any tied or older one that disagrees with Stripe's answer is checked again.
    return applied(context, user, state_of(context, current), stored["state_at"], from_stripe=True)


def applied(
    context: EventContext,
    user: UUID,
    state: SubscriptionState,
    state_at: datetime,
    *,
    from_stripe: bool,
) -> Outcome:
    """Store a state through `conveyor_apply_subscription_state` and sync the user's plan when it
    was stored."""
    exists = context.conn.execute("select 1 from plans where id = %s", (state.plan,)).fetchone()
    if exists is None:
        raise EventFailure(f"subscription {state.subscription}: plan {state.plan!r} does not exist")
    row = context.conn.execute(
        "select conveyor_apply_subscription_state("
        "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) as applied",
        (
            state.subscription,
            user,
            state.customer,
            state.price,
            state.plan,
            state.status,
            state.period[0],
            state.period[1],
            state.cancel_at_period_end,
            state_at,
            context.event_id,
            from_stripe,
        ),
    ).fetchone()
    if not (row and row["applied"]):
        return Outcome.SKIPPED
    context.conn.execute("select conveyor_sync_plan(%s)", (user,))
    return Outcome.PROCESSED
