"""Which request paths a seed-003 credit rate's `endpoint_path` covers."""

from __future__ import annotations

import pytest

from conveyor.ledger.endpoint_rates import path_pattern, specificity


@pytest.mark.parametrize(
    ("endpoint_path", "path", "covered"),
    [
        ("/api/resource/", "/api/resource/", True),
        ("/api/resource/", "/api/resource", False),
        # A whole path, not a prefix: a rate on a listing does not charge what lies under it.
        ("/api/credits/", "/api/credits/transactions/", False),
        ("/api/users/{user_id}/add_credits/", "/api/users/42/add_credits/", True),
        ("/api/users/{user_id}/add_credits/", "/api/users/a/b/add_credits/", False),
        ("/api/users/{user_id}/add_credits/", "/api/users//add_credits/", False),
        # Regular expression characters in a rate are literal.
        ("/api/v1.0/", "/api/v1x0/", False),
    ],
)
def test_a_rate_covers_its_path_with_placeholders_for_one_segment(
    endpoint_path: str, path: str, covered: bool
) -> None:
    assert (path_pattern(endpoint_path).fullmatch(path) is not None) is covered


def test_an_exact_rate_is_preferred_to_one_with_placeholders() -> None:
    rates = ["/api/users/{user_id}/", "/api/users/me/"]
    assert min(rates, key=specificity) == "/api/users/me/"
