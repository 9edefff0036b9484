"""`conveyor.ledger.micro_usd`: USD as the ledger's integer micro-USD, exact from the decimal
text, rounded once half to even; negative, non-finite, oversized and non-number amounts refused."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from conveyor.ledger.micro_usd import (
    MAX_USD,
    UsdAsMicroUsd,
    micro_usd_to_usd,
    usd_to_micro_usd,
)


class Cost(BaseModel):
    usd: UsdAsMicroUsd


def read(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("0", 0),
        ("0.0", 0),
        ("1", 1_000_000),
        ("0.000001", 1),
        ("0.1", 100_000),
        ("1.1", 1_100_000),  # 1.1 * 1e6 in binary floats is 1100000.0000000002
        ("0.30000000000000004", 300_000),  # what 0.1 + 0.2 gives a JavaScript client
        ("0.00015000000000000001", 150),
        ("1E-6", 1),
        ("2.5e-6", 2),  # half to even: down to 2
        ("3.5e-6", 4),  # half to even: up to 4
        ("0.0000025000000000000000000000000000001", 3),  # above half, however far out
        ("1e-999999999", 0),
        ("1000000", 1_000_000_000_000),
    ],
)
def test_usd_text_becomes_exact_micro_usd(text: str, micro: int) -> None:
    assert usd_to_micro_usd(read(text)) == micro


@pytest.mark.parametrize("text", ["-0.01", "-1e-9", "1000000.000001", "1e400"])
def test_negative_and_oversized_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"negative|at most"):
        usd_to_micro_usd(read(text))


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_amounts_are_refused(value: Decimal) -> None:
    with pytest.raises(ValueError, match="finite"):
        usd_to_micro_usd(value)


@pytest.mark.parametrize("value", ["0.5", True, 0.5, None, [1]])
def test_a_body_field_takes_only_json_numbers_read_as_decimals(value: Any) -> None:
    with pytest.raises(ValidationError):
        Cost(usd=value)


def test_a_body_field_holds_micro_usd() -> None:
    assert Cost.model_validate(read('{"usd": 0.0021}')).usd == 2100


def test_micro_usd_reads_back_as_the_same_decimal() -> None:
    assert [micro_usd_to_usd(m) for m in (0, 1, 2100, 1_100_000)] == [0.0, 1e-06, 0.0021, 1.1]
    assert json.dumps(micro_usd_to_usd(123_456_789)) == "123.456789"
    assert usd_to_micro_usd(MAX_USD) == 10**12
