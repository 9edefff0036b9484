"""Seed 003's credits endpoints: the balance, the caller's movements as a bare array, their
summary, and the credit rates in CreditUsageRate's field names. The same ledger as
`/api/credits` (web/credits.py)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, RootModel

from conveyor.ledger import account_pages, accounts, endpoint_rates
from web.body import parse_query
from web.compat.django_common import ArrayQuery, array
from web.context import get_db, get_principal
from web.openapi import contract

bp = Blueprint("django_credits", __name__)


class BalanceView(BaseModel):
    """The caller's credits and plan."""

    credits: int
    subscription_tier: str


class TransactionList(RootModel[list[account_pages.TransactionView]]):
    """A page of the caller's credit movements, newest first."""


class RateList(RootModel[list[endpoint_rates.EndpointRateView]]):
    """A page of credit rates, by id."""


@bp.get("/api/credits/")
@contract({200: BalanceView})
def balance() -> Response:
    """`{credits, subscription_tier}`; a first-time user gets an account with the free plan's
    monthly credits."""
    found = accounts.account(get_db(), get_principal().require_user())
    view = BalanceView(credits=found.credit_balance, subscription_tier=found.plan_id)
    return jsonify(view.model_dump(mode="json"))


@bp.get("/api/credits/transactions/")
@contract({200: TransactionList}, query=ArrayQuery)
def transactions() -> Response:
    """The caller's credit movements, newest first, `?limit=` (100 by default, at most 1,000)
    `&offset=`; a full page has a `Link` to the next."""
    principal = get_principal()
    user_id = principal.require_user()
    query = parse_query(ArrayQuery)
    found = account_pages.list_transactions(
        get_db(), principal.rls_claims(), user_id=user_id, limit=query.limit, offset=query.offset
    )
    return array(found, query)


@bp.get("/api/credits/transactions/summary/")
@contract({200: accounts.CreditSummary})
def transactions_summary() -> Response:
    """`{total_added, total_used, current_balance}` over all of the caller's movements."""
    summary = accounts.credit_summary(get_db(), get_principal().require_user())
    return jsonify(summary.model_dump(mode="json"))


@bp.get("/api/credits/rates/")
@contract({200: RateList}, query=ArrayQuery)
def rates() -> Response:
    """Every credit rate: URL paths charged per request here, and the job keys (`agent:*`,
    `workflow:*`, ...) charged when a run is submitted."""
    principal = get_principal()
    principal.require_user()
    query = parse_query(ArrayQuery)
    found = endpoint_rates.list_rates(
        get_db(), principal.rls_claims(), limit=query.limit, offset=query.offset
    )
    return array(found, query)
