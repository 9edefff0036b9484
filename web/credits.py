"""`/api/credits`, `/api/tokens` (the same balance under the names some clients use) and the
admin top-up `/api/users/<id>/add_credits`. Money moves only through `conveyor.ledger.balances`."""

from __future__ import annotations

from uuid import UUID

from flask import Blueprint, Response, jsonify

from conveyor import ledger
from conveyor.auth.tokens import Principal
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.errors import InsufficientCredits
from conveyor.ledger import accounts
from conveyor.pagination import PageQuery
from conveyor.runs import credit_waits
from web.auth import audit_request, require_admin
from web.body import parse_body
from web.context import get_db, get_enqueuer, get_principal, get_publisher
from web.openapi import contract, listing
from web.pages import own_page

bp = Blueprint("credits", __name__)


@bp.get("/api/credits")
@contract({200: "application/json"})
def balance() -> Response:
    """`{credits, subscription_tier}`; a first-time user gets an account with the free plan's
    monthly credits."""
    found = accounts.account(get_db(), get_principal().require_user())
    return jsonify({"credits": found.credit_balance, "subscription_tier": found.plan_id})


@bp.get("/api/credits/transactions")
@contract({200: listing("transactions", accounts.CreditTransactionView)}, query=PageQuery)
def transactions() -> Response:
    """The caller's credit movements, newest first: `?limit=&cursor=`."""
    return own_page("transactions", accounts.list_credit_transactions)


@bp.get("/api/credits/transactions/summary")
@contract({200: accounts.CreditSummary})
def transactions_summary() -> Response:
    """`{total_added, total_used, current_balance}` over all of the caller's movements."""
    summary = accounts.credit_summary(get_db(), get_principal().require_user())
    return jsonify(summary.model_dump(mode="json"))


@bp.get("/api/credits/rates")
@contract({200: "application/json"})
def rates() -> Response:
    """What one request of each job costs in credits."""
    principal = get_principal()
    principal.require_user()
    listed = accounts.credit_rates(get_db(), principal.rls_claims())
    return jsonify({"rates": [r.model_dump(mode="json") for r in listed]})


def admin_add(admin: Principal, target: UUID, amount: int) -> int:
    """Add credits to target as an `adjustment` by admin, audited; returns the new balance."""
    db = get_db()
    move = ledger.add_credits(
        db, target, amount, kind="adjustment", description=f"Added by admin {admin.user_id}"
    )
    audit_request(
        db,
        action="admin.credits.add",
        outcome="success",
        actor_user_id=admin.user_id,
        subject=str(target),
        details={"amount": amount, "new_balance": move.balance},
    )
    resume_waiting_runs(target)
    return move.balance


def resume_waiting_runs(user: UUID) -> None:
    """After credits were added (committed): the user's runs waiting for credits go on (if Redis
    refuses, the requeue job publishes the queued runs)."""
    resumed = credit_waits.resume_credit_waiters(get_db(), user)
    for run_id in credit_waits.publish_resumed(get_publisher(), resumed):
        get_enqueuer().enqueue(TASK_EXECUTE_RUN, str(run_id))


@bp.post("/api/users/<user_id>/add_credits")
@contract({200: "application/json"}, body=accounts.CreditAmount, auth="admin")
def add_credits(user_id: str) -> Response:
    """Admins only: `{amount}` → `{message, new_balance}`. The user must already have an account
    or exist in Supabase Auth (400 UNKNOWN_USER), so a mistyped id credits nobody."""
    admin = require_admin()
    target = accounts.parse_user_id(user_id)
    body = parse_body(accounts.CreditAmount)
    accounts.require_known_user(get_db(), target)
    new_balance = admin_add(admin, target, body.amount)
    return jsonify(
        {"message": f"Added {body.amount} credits to user {target}.", "new_balance": new_balance}
    )


@bp.get("/api/tokens")
@contract({200: "application/json"})
def tokens() -> Response:
    """`{tokens}`: the caller's credit balance, as `GET /api/credits` reports it."""
    found = accounts.account(get_db(), get_principal().require_user())
    return jsonify({"tokens": found.credit_balance})


@bp.post("/api/tokens/add")
@contract({200: "application/json"}, body=accounts.CreditAmount, auth="admin")
def add_tokens() -> Response:
    """Admins only: `{amount}` → `{message, tokens}`, added to the caller's own balance.

    Adding is admin-only because credits are paid for: letting a user top up their own balance
    for free would make every limit meaningless. Users get credits from their plan's monthly
    grant or a purchase; admins credit someone else with `POST /api/users/<id>/add_credits`.
    Audited like that endpoint."""
    admin = require_admin()
    body = parse_body(accounts.CreditAmount)
    new_balance = admin_add(admin, admin.require_user(), body.amount)
    return jsonify({"message": f"Added {body.amount} credits.", "tokens": new_balance})


@bp.post("/api/tokens/deduct")
@contract({200: "application/json"}, body=accounts.CreditAmount)
def deduct_tokens() -> Response:
    """`{amount}` → `{message, tokens}`: take credits from the caller's own balance, never below
    zero (403 INSUFFICIENT_CREDITS, nothing taken)."""
    user_id = get_principal().require_user()
    body = parse_body(accounts.CreditAmount)
    move = ledger.deduct_credits(
        get_db(),
        user_id,
        body.amount,
        kind="usage",
        description="Deducted through POST /api/tokens/deduct",
        endpoint="api:tokens/deduct",
    )
    if not move.applied:
        raise InsufficientCredits(
            f"Deducting {body.amount} credit(s) needs more than your balance of {move.balance}; "
            "top up credits to continue.",
            required=body.amount,
            balance=move.balance,
        )
    return jsonify({"message": f"Deducted {body.amount} credits.", "tokens": move.balance})
