"""Configuration, read once from the environment (and `.env`) with pydantic-settings."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor.constants import BROKER_SCHEMES
from conveyor.setting_values import DEFAULT_LLM_PRICES, LlmRateLimit, ModelPrice, StripePrice

# File names under data_dir, not secrets.
DEV_SECRET_FILE = "jwt-secret"  # noqa: S105
DEV_API_SECRET_FILE = "api-jwt-secret"  # noqa: S105


class Settings(BaseSettings):
    """Every knob Conveyor has. Environment variable names are the upper-case field names."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    environment: Literal["development", "production"] = Field(
        "development", validation_alias=AliasChoices("CONVEYOR_ENV", "ENVIRONMENT")
    )
    # Unset means "start an embedded server under data_dir" (development only).
    database_url: str | None = None
    # Web, worker and beat statements running longer (a lock wait included) are cancelled and answer
    # 503 / retry later; 0 turns it off. Sent as a startup option: see docs/operations.md for
    # transaction poolers that refuse one.
    database_statement_timeout_seconds: float = Field(60.0, ge=0, le=86_400)
    redis_url: str | None = None
    # Celery's broker: unset means REDIS_URL; `amqp://` for RabbitMQ (docs/architecture.md,
    # "Brokers"). Redis stays for pub/sub, rate limits and heartbeats either way.
    broker_url: str | None = None
    data_dir: Path = Field(Path(".conveyor"), validation_alias="CONVEYOR_DATA_DIR")

    supabase_url: str | None = None
    supabase_jwt_secret: SecretStr | None = None
    supabase_service_role_key: SecretStr | None = None
    # Sent as `apikey` on Supabase Auth calls (sign-up, sign-in, ...); the service role key
    # stands in when unset. SUPABASE_KEY is the name seed 004's backend used for it.
    supabase_anon_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SUPABASE_ANON_KEY", "SUPABASE_KEY")
    )
    # Asymmetric signing keys; default: SUPABASE_URL + /auth/v1/.well-known/jwks.json.
    supabase_jwks_url: str | None = None
    # Checked only when set; Supabase issues `<SUPABASE_URL>/auth/v1`.
    supabase_jwt_issuer: str | None = None
    jwt_audience: str = "authenticated"
    jwt_leeway_seconds: int = Field(10, ge=0, le=300)
    jwks_cache_seconds: int = Field(600, ge=1)
    # However many unknown `kid`s arrive, the JWKS endpoint is fetched at most this often.
    jwks_min_refetch_seconds: float = Field(30.0, ge=0)
    # Signs backend tokens (from /api/auth/exchange-token) and service tokens.
    api_jwt_secret: SecretStr | None = None
    backend_token_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)

    stripe_secret_key: SecretStr | None = None
    # Comma-separated while rotating: a webhook signed with any of them is accepted.
    stripe_webhook_secret: SecretStr | None = None
    stripe_webhook_tolerance_seconds: int = Field(300, ge=1, le=3600)
    # The catalogue (JSON): price id -> {"plan": "<plan id>"} or {"credits": <pack size>}.
    # Checkout accepts only these prices.
    stripe_prices: dict[str, StripePrice] = Field(default_factory=dict)
    stripe_price_id: str | None = None  # what checkout sells when the request names no price
    stripe_mode: Literal["subscription", "payment"] = "subscription"
    stripe_success_url: str | None = None
    stripe_cancel_url: str | None = None
    stripe_api_base: str | None = None  # a local server speaking Stripe's API, in tests
    # The reconciler also lists the last days of events from Stripe's API and stores any that
    # never arrived (needs STRIPE_SECRET_KEY).
    stripe_reconcile_from_api: bool = True
    stripe_event_max_attempts: int = Field(10, ge=1, le=100)
    # A stored event still `received` after this long lost its queue message (Redis was down
    # when it arrived): the reconciler queues it again.
    stripe_event_stuck_seconds: int = Field(120, ge=1)

    timezone: str = Field("UTC", validation_alias=AliasChoices("CONVEYOR_TIMEZONE", "TIMEZONE"))
    run_events_retention_days: int = Field(30, ge=1)
    usage_events_retention_days: int = Field(400, ge=1)
    audit_logs_retention_days: int = Field(90, ge=1)
    # Retention deletes remove this many rows per transaction.
    maintenance_batch_size: int = Field(5000, ge=100, le=100_000)
    # A daily or monthly job missed while everything was down still runs for its period when the
    # system is back within this many days (interval jobs never catch up).
    maintenance_catch_up_days: int = Field(7, ge=0, le=31)

    # A queued run older than this is published again by the reaper (the runs table is the outbox).
    requeue_after_seconds: int = Field(60, ge=1)
    run_lease_seconds: int = Field(300, ge=5)
    # Redis hands an unacknowledged message (its worker was killed) to another worker after
    # this; at least twice the lease (runs) and longer than any usage batch or webhook attempt.
    broker_visibility_timeout_seconds: int = Field(3600, ge=10)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # POST /api/usage (service tokens only) takes 1,000 events: ~1.5 KB each with every string at
    # its limit, ~11 KB with a full `error`, so every valid batch fits.
    usage_max_body_bytes: int = Field(16 * 1_048_576, ge=1024)
    # Requests without valid credentials (health, the dashboard, token exchange, /metrics without
    # its token, anything answered 401) are limited per client address: this many a minute, in
    # bursts of up to UNAUTHENTICATED_RATE_BURST; 0 turns the limit off. The Stripe webhook is
    # exempt (signed, and Stripe retries).
    unauthenticated_rate_limit: int = Field(60, ge=0)
    unauthenticated_rate_burst: int = Field(20, ge=1)
    # Networks never limited (comma-separated), e.g. the load balancer's health checks.
    rate_limit_exempt_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    # The Django template's paths (seed 003) allow each plan `plans.daily_api_request_limit`
    # requests a day (UTC); anonymous callers (register, login) get this many per client address.
    # 0 turns the anonymous limit off.
    anonymous_daily_api_requests: int = Field(100, ge=0)
    # Proxies in front of the app that append the client to X-Forwarded-For (0: none; trust the
    # socket's peer). The address of the client is the one that many hops from the right.
    trusted_proxy_hops: int = Field(0, ge=0, le=10)
    # Every call to Stripe's API (connect and read, each), retried NETWORK_RETRIES times.
    stripe_timeout_seconds: float = Field(20.0, gt=0, le=120)
    # On SIGTERM a worker's running runs go on (and finish if they can) for this long; then each
    # goes back to the queue for another worker to resume from its last checkpoint.
    worker_drain_seconds: float = Field(10.0, ge=0, le=3600)

    # Workflows: Python modules that declare them (imported by web and worker), and a folder of
    # JSON/YAML definitions.
    workflow_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("CONVEYOR_WORKFLOW_MODULES")
    )
    workflows_dir: Path = Field(Path("workflows"), validation_alias="CONVEYOR_WORKFLOWS_DIR")
    # `async: false` submits wait this long for the result before answering 202.
    workflow_wait_seconds: float = Field(10.0, ge=0, le=60)
    # How often a running run looks for a cancel request (the lease is renewed less often).
    cancel_check_seconds: float = Field(1.0, gt=0, le=60)
    # Step outputs bigger than this are stored outside the row and referenced by URL.
    output_inline_max_bytes: int = Field(65_536, ge=1024)
    artifacts_bucket: str = "conveyor-artifacts"
    # While Supabase Storage is unavailable a worker keeps its run (and the output it could not
    # store) and tries again for this long; then the run goes back to the queue, its step's
    # attempt uncounted, and the task retries with backoff.
    storage_wait_seconds: float = Field(60.0, ge=0, le=3600)

    # Any OpenAI-compatible chat completions API: OpenAI, Ollama, vLLM, LiteLLM.
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    llm_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_LLM_PRICES))
    # A streamed `llm` step appends its new text as one `step_tokens` run event at most this often
    # (plus a last one): each event is a Postgres row and a Redis publish, so not one per token.
    llm_stream_flush_seconds: float = Field(0.05, ge=0, le=10)
    # Sent as `max_tokens` by an `llm` step that names none: the reply's cap is what a credit
    # reservation and a rate limit count on, so every call has one.
    llm_default_max_tokens: int = Field(4096, ge=1, le=1_000_000)

    # Flow control (docs/architecture.md, "Flow control").
    # Held runs (concurrency keys, priority, singleton, debounce):
    # Runs held for dispatch that may sit published but unclaimed at once: the broker stays
    # shallow, so priority and fairness are decided in Postgres, not in the broker's order.
    dispatch_window: int = Field(16, ge=1, le=10_000)
    # LLM rate limits:
    # Global limits on model calls, keyed "provider:model" (provider as in usage, e.g. openai)
    # or "*" for any other model (each model its own budget); JSON env LLM_RATE_LIMITS.
    llm_rate_limits: dict[str, LlmRateLimit] = Field(default_factory=dict)
    # The limits' window: 60 s in production ("per minute"); tests shorten it.
    llm_rate_limit_window_seconds: float = Field(60.0, gt=0, le=3600)
    # Waits up to this sleep in the worker; longer ones park the run and free the slot.
    llm_rate_limit_max_wait_seconds: float = Field(10.0, ge=0, le=3600)
    # Credit reservations:
    # Credits a model call costs per US dollar of its price (LLM_PRICES / model_prices); 0: model
    # calls cost no credits (a run's admission rate is its price), and a reservation holds quota.
    llm_credits_per_usd: int = Field(0, ge=0, le=10**9)
    # A run whose model call its credits cannot cover waits this long for credits, then fails.
    credit_wait_seconds: float = Field(24 * 3600.0, ge=0, le=366 * 24 * 3600)

    # Realtime
    # The server pings each websocket this often; no pong by the next ping closes it.
    ws_ping_seconds: float = Field(25.0, gt=0, le=300)
    # Messages one socket may have waiting (status updates coalesce first); past it, close 1013.
    ws_queue_size: int = Field(256, ge=4, le=100_000)
    # A socket still stuck writing this long after it overflowed is cut off without a close frame.
    ws_send_grace_seconds: float = Field(5.0, gt=0, le=120)
    ws_max_message_bytes: int = Field(65_536, ge=1024, le=16_777_216)
    # permessage-deflate compresses per message per socket (~4x the server CPU in bench/ws.py) and
    # rules out sharing one frame between sockets; off, the server declines clients' offers.
    ws_compression: bool = False
    # gunicorn threads per web worker (`conveyor run`): each open websocket holds one.
    web_threads: int = Field(1100, ge=4, le=10_000)

    # Outbound webhooks (docs/webhooks.md). Private targets (loopback, RFC 1918, link-local) are
    # refused unless allowed: development and tests only.
    allow_private_webhooks: bool = Field(
        False,
        validation_alias=AliasChoices("CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", "ALLOW_PRIVATE_WEBHOOKS"),
    )
    # A delivery is retried with exponential backoff and jitter (base, 2x base, ... at most max)
    # until this many hours after its event, then given up.
    webhook_retry_hours: float = Field(24.0, gt=0, le=24 * 7)
    webhook_retry_base_seconds: float = Field(30.0, gt=0, le=3600)
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, le=24 * 3600)
    webhook_connect_timeout_seconds: float = Field(5.0, gt=0, le=60)
    webhook_read_timeout_seconds: float = Field(10.0, gt=0, le=120)
    # This many failed attempts in a row disable an endpoint (and tell its owner).
    webhook_disable_after_failures: int = Field(20, ge=1, le=10_000)
    webhook_max_endpoints: int = Field(10, ge=1, le=1000)

    # When set, GET /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: SecretStr | None = None
    # A worker on its own host has no web beside it to serve its samples: its main process serves
    # them at :<port>/metrics (worker/metrics_http.py). Unset: none.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)

    web_host: str = "127.0.0.1"
    web_port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("workflow_modules", "rate_limit_exempt_networks", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("supabase_jwt_secret", "metrics_token", mode="before")
    @classmethod
    def _empty_secret_is_none(cls, value: object) -> object:
        # docker-compose passes an unset secret as "" (a project on asymmetric keys has none);
        # an empty HMAC key must never verify anything.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC") from exc
        return value

    @model_validator(mode="after")
    def _default_price_in_catalogue(self) -> Settings:
        if self.stripe_price_id is None:
            return self
        price = self.stripe_prices.get(self.stripe_price_id)
        if price is None:
            raise ValueError(
                f"STRIPE_PRICE_ID {self.stripe_price_id!r} is not in STRIPE_PRICES; add it there "
                'with what it sells, e.g. {"price_...": {"plan": "basic"}}'
            )
        if price.mode != self.stripe_mode:
            raise ValueError(
                f"STRIPE_PRICE_ID {self.stripe_price_id!r} is sold with STRIPE_MODE={price.mode}, "
                f"not {self.stripe_mode}"
            )
        return self

    @model_validator(mode="after")
    def _check_in_within_the_lease(self) -> Settings:
        if self.cancel_check_seconds > self.run_lease_seconds / 3:
            raise ValueError(
                "CANCEL_CHECK_SECONDS must be at most a third of RUN_LEASE_SECONDS, or a healthy "
                "worker's lease could expire between check-ins"
            )
        return self

    @field_validator("broker_url")
    @classmethod
    def _a_broker_conveyor_speaks(cls, url: str | None) -> str | None:
        if not url:  # BROKER_URL= (empty, as compose passes an unset one) means unset
            return None
        if urlsplit(url).scheme not in BROKER_SCHEMES:
            raise ValueError(
                "BROKER_URL must be a redis://, rediss://, amqp:// or amqps:// URL (or unset: "
                "the broker is then REDIS_URL)"
            )
        return url

    def celery_broker_url(self) -> str | None:
        """Where Celery's messages go: BROKER_URL, else REDIS_URL."""
        return self.broker_url or self.redis_url

    @model_validator(mode="after")
    def _production_needs_real_services(self) -> Settings:
        if self.environment == "production":
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("REDIS_URL", self.redis_url),
                    # A project on asymmetric signing keys has no HS256 secret: its JWKS will do.
                    (
                        "SUPABASE_JWT_SECRET or SUPABASE_URL",
                        self.supabase_jwt_secret or self.jwks_url(),
                    ),
                    ("API_JWT_SECRET", self.api_jwt_secret),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"missing required setting(s) for production: {', '.join(missing)}"
                )
        return self

    def jwt_secret(self) -> str:
        """The HS256 secret for Supabase JWTs; in development, one generated under data_dir."""
        return self._secret(self.supabase_jwt_secret, "SUPABASE_JWT_SECRET", DEV_SECRET_FILE)

    def supabase_hs256_secret(self) -> str | None:
        """The HS256 secret to verify Supabase JWTs with, if any: in production none is needed
        when the project signs with asymmetric keys (SUPABASE_URL's JWKS)."""
        if self.supabase_jwt_secret is None and self.environment == "production":
            return None
        return self.jwt_secret()

    def api_secret(self) -> str:
        """The HS256 secret for backend and service tokens; in development, one under data_dir."""
        return self._secret(self.api_jwt_secret, "API_JWT_SECRET", DEV_API_SECRET_FILE)

    def _secret(self, configured: SecretStr | None, name: str, dev_file: str) -> str:
        if configured is not None:
            return configured.get_secret_value()
        if self.environment == "production":
            raise RuntimeError(f"{name} is not set")
        return dev_secret(self.data_dir, dev_file)

    def stripe_webhook_secrets(self) -> list[str]:
        """The webhook signing secrets to try, newest first as configured."""
        if self.stripe_webhook_secret is None:
            return []
        raw = self.stripe_webhook_secret.get_secret_value()
        return [part.strip() for part in raw.split(",") if part.strip()]

    def jwks_url(self) -> str | None:
        """Where Supabase publishes its signing keys, if known."""
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None


def dev_secret(data_dir: Path, name: str) -> str:
    """Load (or create once) a development secret kept in data_dir, readable by owner only."""
    path = data_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        # O_EXCL: when web, worker and CLI start together, exactly one of them writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
