"""A credit pack claimed by its buyer right after checkout (`POST /api/v1/tokens/add`): the session
is read from Stripe and granted by the webhook's own grant, keyed by the session id, so the
claim and the `checkout.session.completed` webhook add its credits once between them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import stripe

from conveyor.billing.event_context import META_CREDITS, META_USER, EventContext, EventFailure
from conveyor.billing.handlers import grant_credit_pack
from conveyor.billing.stripe_api import provider_errors
from conveyor.billing.stripe_objects import parse_uuid
from conveyor.db import Database
from conveyor.errors import BadRequest, Forbidden
from conveyor.settings import Settings

HOW_TO_BUY = (
    "Tokens are bought, not asked for: create a checkout with POST "
    "/api/payments/create-checkout-session (a credit pack price), pay, then send its "
    "checkout_session_id here (the payment's webhook adds them too)."
)
PAID_STATUSES = ("paid", "no_payment_required")


class PurchaseRequired(Forbidden):
    """Adding tokens needs a paid credit pack checkout of yours."""

    code = "PURCHASE_REQUIRED"


class AmountMismatch(BadRequest):
    """The amount differs from what the checkout session bought."""

    code = "AMOUNT_MISMATCH"


@dataclass(frozen=True)
class Claim:
    """A claimed checkout: whose credits, how many, whether this call granted them (False: the
    webhook or an earlier claim already had), and the balance after."""

    session_id: str
    user_id: UUID
    credits: int
    granted: bool
    balance: int


def refuse(reason: str) -> PurchaseRequired:
    """A PurchaseRequired that ends by saying how to buy."""
    return PurchaseRequired(f"{reason} {HOW_TO_BUY}")


def fetch_session(client: stripe.StripeClient, session_id: str) -> dict[str, Any]:
    """The checkout session as Stripe has it now; PurchaseRequired when Stripe has none."""
    with provider_errors():
        try:
            session = client.v1.checkout.sessions.retrieve(session_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise refuse(f"Stripe has no checkout session {session_id!r}.") from exc
            raise
    found: dict[str, Any] = session.to_dict()
    return found


def purchased_credits(session: dict[str, Any], buyer: UUID | None) -> tuple[UUID, int]:
    """The session's owner and the credits it bought, if it is a paid credit pack of buyer's
    (any owner's when buyer is None); PurchaseRequired saying what is missing otherwise."""
    metadata = session.get("metadata") or {}
    owner = parse_uuid(metadata.get(META_USER)) or parse_uuid(session.get("client_reference_id"))
    if owner is None or (buyer is not None and owner != buyer):
        raise refuse(f"Checkout session {session.get('id')} was not bought by you.")
    raw = metadata.get(META_CREDITS)
    if session.get("mode") != "payment" or raw is None or not str(raw).isdigit() or int(raw) <= 0:
        raise refuse(f"Checkout session {session.get('id')} did not buy a credit pack.")
    if session.get("payment_status") not in PAID_STATUSES:
        raise refuse(
            f"Checkout session {session.get('id')} is not paid yet "
            f"(payment_status {session.get('payment_status')!r}); its credits are added once "
            "it is."
        )
    return owner, int(raw)


def claim_credit_pack(
    db: Database,
    settings: Settings,
    client: stripe.StripeClient,
    *,
    session_id: str,
    buyer: UUID | None,
    amount: int | None = None,
) -> Claim:
    """Grant a paid credit pack checkout once, as its webhook would; buyer must own it (None: any
    owner, for admins and services) and amount, if given, must be what it bought."""
    session = fetch_session(client, session_id)
    owner, credits = purchased_credits(session, buyer)
    if amount is not None and amount != credits:
        raise AmountMismatch(
            f"Checkout session {session_id} bought {credits} tokens, not {amount}; send "
            f"amount {credits}."
        )
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (owner,))
        # The account lock is the one the ledger's grant takes, so the webhook's grant of this
        # session waits for this transaction or went before it: `granted` is exact.
        conn.execute("select 1 from user_accounts where user_id = %s for update", (owner,))
        done = conn.execute(
            "select 1 from credit_transactions where reference = %s", (session["id"],)
        ).fetchone()
        if done is None:
            context = EventContext(
                conn=conn,
                settings=settings,
                event_id=f"claim:{session['id']}",
                created=datetime.now(UTC),
                obj=session,
            )
            try:
                grant_credit_pack(context, owner, session)
            except EventFailure as exc:
                raise refuse(str(exc)) from exc
        row = conn.execute(
            "select credit_balance from user_accounts where user_id = %s", (owner,)
        ).fetchone()
    assert row is not None
    return Claim(session["id"], owner, credits, done is None, int(row["credit_balance"]))
