"""USD amounts as the ledger's unit, integer micro-USD, exactly: from the decimal a client wrote,
never through a binary float, rounded once, half to even."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from conveyor.ledger.balances import MAX_MICRO_USD

MICRO_USD_PER_USD = 1_000_000
MAX_USD = Decimal(MAX_MICRO_USD) / MICRO_USD_PER_USD
# Below 10^-7 USD an amount is under 0.1 micro-USD and rounds to 0; deciding that from the
# exponent also keeps `1e-999999999` from becoming a billion-digit Fraction.
SMALLEST_EXPONENT = -7


def usd_to_micro_usd(amount: Decimal | int) -> int:
    """amount * 10^6 rounded half to even; ValueError when negative, not finite or over MAX_USD."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError("must be a number of USD")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError("must be a finite number of USD")
    if value < 0:
        raise ValueError("must not be negative")
    if value > MAX_USD:
        raise ValueError(f"must be at most {MAX_USD} USD")
    if value.adjusted() < SMALLEST_EXPONENT:
        return 0
    # Fraction is exact and round() on it rounds half to even.
    return round(Fraction(value) * MICRO_USD_PER_USD)


def micro_usd_to_usd(micro_usd: int) -> float:
    """The JSON number for micro_usd in USD: the double nearest to the exact decimal, which JSON
    writes as that decimal (at most six places)."""
    return float(Fraction(micro_usd, MICRO_USD_PER_USD))


def _parse_usd(value: Any) -> int:
    """A JSON number of USD (read as Decimal or int) as micro-USD; strings, booleans and binary
    floats are refused, so money is never coerced or passed through float arithmetic."""
    if isinstance(value, float):
        raise ValueError("must be read from the JSON text as a decimal, not a binary float")
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValueError("must be a JSON number of USD")
    return usd_to_micro_usd(value)


# A body field sent in USD (a JSON number) and held as micro-USD.
UsdAsMicroUsd = Annotated[
    int,
    BeforeValidator(_parse_usd),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": float(MAX_USD),
            "description": "USD; recorded as integer micro-USD, rounded half to even.",
        }
    ),
]
