"""Settings fail early and by name, and development works with nothing configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from conveyor.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_production_without_required_values_names_each_missing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "SUPABASE_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError) as caught:
        settings(environment="production", database_url="postgresql://db/x")
    message = str(caught.value)
    assert "REDIS_URL" in message
    assert "SUPABASE_JWT_SECRET" in message
    assert "DATABASE_URL" not in message


def test_production_on_asymmetric_keys_needs_no_hs256_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SUPABASE_JWT_SECRET", raising=False)
    loaded = settings(
        environment="production",
        database_url="postgresql://db/x",
        redis_url="redis://cache:6379/0",
        api_jwt_secret="x" * 40,
        supabase_url="https://project.supabase.co",
        data_dir=tmp_path,
    )
    assert loaded.supabase_hs256_secret() is None
    assert loaded.jwks_url() == "https://project.supabase.co/auth/v1/.well-known/jwks.json"
    assert not list(tmp_path.iterdir())  # no development secret was made up


def test_an_empty_hs256_secret_counts_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="SUPABASE_JWT_SECRET or SUPABASE_URL"):
        settings(
            environment="production",
            database_url="postgresql://db/x",
            redis_url="redis://cache:6379/0",
            api_jwt_secret="x" * 40,
            supabase_jwt_secret="",
        )


def test_without_a_broker_url_celery_uses_the_redis_url() -> None:
    loaded = settings(redis_url="redis://cache:6379/0", broker_url="")
    assert loaded.broker_url is None
    assert loaded.celery_broker_url() == "redis://cache:6379/0"


def test_a_rabbitmq_broker_url_carries_the_tasks() -> None:
    loaded = settings(redis_url="redis://cache:6379/0", broker_url="amqp://u:p@mq:5672/prod")
    assert loaded.celery_broker_url() == "amqp://u:p@mq:5672/prod"


def test_a_broker_conveyor_does_not_speak_is_refused_with_the_ones_it_does() -> None:
    with pytest.raises(ValidationError, match="amqp://"):
        settings(broker_url="kafka://broker:9092")


def test_unknown_timezone_is_refused_with_a_hint() -> None:
    with pytest.raises(ValidationError, match="IANA"):
        settings(timezone="Mars/Olympus")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("REQUEUE_AFTER_SECONDS", "15")
    loaded = settings()
    assert loaded.timezone == "Europe/Berlin"
    assert loaded.requeue_after_seconds == 15


def test_development_secret_is_created_once_and_reused(tmp_path: Path) -> None:
    first = settings(data_dir=tmp_path).jwt_secret()
    second = settings(data_dir=tmp_path).jwt_secret()
    assert first == second
    assert len(first) >= 32
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


def test_configured_secret_wins_over_the_development_one(tmp_path: Path) -> None:
    assert settings(data_dir=tmp_path, supabase_jwt_secret="s" * 40).jwt_secret() == "s" * 40
    assert not (tmp_path / "jwt-secret").exists()


def test_check_ins_slower_than_a_third_of_the_lease_are_refused() -> None:
    with pytest.raises(ValidationError, match="CANCEL_CHECK_SECONDS"):
        Settings(_env_file=None, run_lease_seconds=10, cancel_check_seconds=5)  # type: ignore[call-arg]


def test_the_stripe_catalogue_is_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_PRICES", '{"price_a": {"plan": "basic"}, "price_b": {"credits": 5}}')
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_new, whsec_old")
    loaded = settings()
    assert loaded.stripe_prices["price_a"].mode == "subscription"
    assert loaded.stripe_prices["price_b"].mode == "payment"
    assert loaded.stripe_webhook_secrets() == ["whsec_new", "whsec_old"]


def test_a_stripe_price_sells_a_plan_or_credits_not_both() -> None:
    with pytest.raises(ValidationError, match="either"):
        settings(stripe_prices={"price_x": {"plan": "basic", "credits": 10}})


def test_the_default_stripe_price_must_be_in_the_catalogue_and_match_the_mode() -> None:
    with pytest.raises(ValidationError, match="not in STRIPE_PRICES"):
        settings(stripe_price_id="price_missing")
    with pytest.raises(ValidationError, match="STRIPE_MODE=payment"):
        settings(stripe_price_id="price_pack", stripe_prices={"price_pack": {"credits": 10}})


def test_rate_limit_exempt_networks_are_read_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATE_LIMIT_EXEMPT_NETWORKS", "10.0.0.0/8, ::1/128")

    exempt = settings().rate_limit_exempt_networks

    assert [str(network) for network in exempt] == ["10.0.0.0/8", "::1/128"]
