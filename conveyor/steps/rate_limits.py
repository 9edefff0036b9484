"""Global LLM rate limits (tokens and requests a window) per provider+model, shared in Redis.

A sliding window log weighted by tokens: each admitted call is an entry (Redis's clock, its
tokens) in a sorted set; a call is admitted when the entries of the last window plus its estimate
fit the limit (or the window is empty: a call larger than the limit goes alone). So the tokens
admitted in any window are at most the limit, or one call's estimate when a single call exceeds
it; corrections only lower an entry to the call's real usage. One Lua call decides atomically
across processes and hosts. Redis down: fail closed (the step retries later), since an open
limit spends provider quota and gets every tenant 429s, unlike the API limiter.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import redis

from conveyor.constants import REDIS_PREFIX
from conveyor.metrics import RATE_LIMIT_WAIT
from conveyor.setting_values import LlmRateLimit
from conveyor.settings import Settings
from conveyor.steps.base import CallEstimate, StepContext, StepDeferred, StepFailure

KEY_PREFIX = f"{REDIS_PREFIX}llmlimit:"

# KEYS: log (zset member->admitted ms), tokens (hash member->tokens), block (provider pushback).
# ARGV: member, tokens, tokens limit (0: none), requests limit (0: none), window ms.
# Returns {1, 0} when admitted, else {0, ms to wait}.
ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local need = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local blocked = redis.call('PTTL', KEYS[3])
if blocked > 0 then return {0, blocked} end
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('HDEL', KEYS[2], unpack(old))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used, count = 0, #live / 2
local tokens = {}
for i = 1, #live, 2 do
  local n = tonumber(redis.call('HGET', KEYS[2], live[i]) or 0)
  tokens[#tokens + 1] = {n, tonumber(live[i + 1])}
  used = used + n
end
local fits_tokens = tpm == 0 or count == 0 or used + need <= tpm
local fits_requests = rpm == 0 or count < rpm
if fits_tokens and fits_requests then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], need)
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[2], window)
  return {1, 0}
end
local wait = 1
if not fits_requests then
  wait = math.max(wait, tokens[count - rpm + 1][2] + window - now)
end
if not fits_tokens then
  local left = used
  for i = 1, #tokens do
    left = left - tokens[i][1]
    if left == 0 or left + need <= tpm then
      wait = math.max(wait, tokens[i][2] + window - now)
      break
    end
  end
end
return {0, wait + 1}
"""

# KEYS: log, tokens. ARGV: member, real tokens. Lowers (or raises) a live entry; 0 drops it.
CORRECT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if tonumber(ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"""

# KEYS: block. ARGV: ms. Extends the block, never shortens it.
BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], 1, 'PX', ms) end
return 1
"""

# A blocked call re-asks this often, even before its computed wait is over: calls in flight
# give back what they did not use when they end, which no computed wait can foresee.
POLL_SECONDS = 0.25
# Before parking a run for a long wait, it polls this long for such give-backs.
SETTLE_GRACE_SECONDS = 2.0

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One client (a connection pool) per process and URL, made on first use."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return _clients[url]


@dataclass(frozen=True)
class Grant:
    """An admitted call: its limit's name, its entry and the limit's Redis keys."""

    name: str
    member: str
    keys: tuple[str, str, str]


def limit_for(settings: Settings, provider: str, model: str) -> tuple[str, LlmRateLimit] | None:
    """The limit a call to provider:model falls under ('provider:model', else '*'), by name."""
    name = f"{provider}:{model}"
    limit = settings.llm_rate_limits.get(name) or settings.llm_rate_limits.get("*")
    return (name, limit) if limit is not None else None


def _keys(name: str, user_id: uuid.UUID | None) -> tuple[str, str, str]:
    base = KEY_PREFIX + name + (f":user:{user_id}" if user_id is not None else "")
    return (base + ":log", base + ":tokens", base + ":block")


def acquire(ctx: StepContext, estimate: CallEstimate) -> Grant | None:
    """Take the call's estimate from its limit, waiting inline up to LLM_RATE_LIMIT_MAX_WAIT;
    a longer wait raises StepDeferred("rate_limit") so the worker slot is freed."""
    settings = ctx.settings
    found = limit_for(settings, estimate.provider, estimate.model)
    if found is None or settings.redis_url is None:
        return None
    name, limit = found
    keys = _keys(name, ctx.user_id if limit.per_user else None)
    member = uuid.uuid4().hex
    client = redis_client(settings.redis_url)
    started = time.monotonic()
    while True:
        try:
            admitted, wait_ms = client.eval(
                ACQUIRE, 3, *keys, member, estimate.total_tokens,
                limit.tokens_per_minute or 0, limit.requests_per_minute or 0,
                round(settings.llm_rate_limit_window_seconds * 1000),
            )  # fmt: skip
        except redis.RedisError as exc:
            raise StepFailure(
                f"rate limit store unavailable: {exc}",
                retryable=True,
                code="RATE_LIMIT_UNAVAILABLE",
            ) from exc
        if admitted:
            RATE_LIMIT_WAIT.labels(name).observe(time.monotonic() - started)
            return Grant(name=name, member=member, keys=keys)
        wait = float(wait_ms) / 1000
        waited = time.monotonic() - started
        too_long = waited + wait > settings.llm_rate_limit_max_wait_seconds
        if too_long and waited >= min(
            SETTLE_GRACE_SECONDS, settings.llm_rate_limit_max_wait_seconds
        ):
            RATE_LIMIT_WAIT.labels(name).observe(waited + wait)
            until = datetime.now(UTC) + timedelta(seconds=wait)
            raise StepDeferred("rate_limit", until=until, detail={"limit": name, "wait": wait})
        ctx.sleep(min(wait, POLL_SECONDS, ctx.remaining()))


def settle(ctx: StepContext, grant: Grant | None, real_tokens: int) -> None:
    """Correct the admitted entry to the call's real tokens (0: the provider took nothing)."""
    if grant is None or ctx.settings.redis_url is None:
        return
    with contextlib.suppress(redis.RedisError):  # else the estimate stays counted: the safe side
        redis_client(ctx.settings.redis_url).eval(
            CORRECT, 2, grant.keys[0], grant.keys[1], grant.member, real_tokens
        )


def block(ctx: StepContext, grant: Grant | None, seconds: float) -> None:
    """Hold the key for everyone for seconds (the provider's Retry-After or reset)."""
    if grant is None or ctx.settings.redis_url is None or seconds <= 0:
        return
    with contextlib.suppress(redis.RedisError):  # the step's own retry still waits Retry-After
        redis_client(ctx.settings.redis_url).eval(
            BLOCK, 1, grant.keys[2], max(1, round(seconds * 1000))
        )


# The longest a provider's Retry-After or reset header holds a key for everyone.
MAX_PUSHBACK_SECONDS = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def reset_seconds(value: str) -> float | None:
    """OpenAI's reset header ('6m0s', '1.5s', '20ms') in seconds; None if unreadable."""
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def pushback_seconds(response: httpx.Response) -> float | None:
    """How long the provider says the key is spent: Retry-After on a 429, or the reset of an
    exhausted token or request quota (x-ratelimit-remaining-* of 0)."""
    headers: Any = response.headers
    waits: list[float] = []
    if response.status_code == 429:
        try:
            waits.append(float(headers.get("retry-after", "")))
        except ValueError:
            waits.append(1.0)
    for kind in ("tokens", "requests"):
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0":
            reset = reset_seconds(headers.get(f"x-ratelimit-reset-{kind}", ""))
            if reset is not None:
                waits.append(reset)
    if not waits:
        return None
    # One provider's answer blocks the model for every tenant: never longer than the cap, and a
    # header that is not a finite, positive number (inf, nan, -5) counts as a second.
    wait = max(waits)
    return min(wait, MAX_PUSHBACK_SECONDS) if math.isfinite(wait) and wait > 0 else 1.0


@dataclass(frozen=True)
class LimitUsage:
    """One limit's budget in the current window, for the dashboard."""

    key: str  # "provider:model", with ":user:<id>" for a per-user limit
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_used: int
    tokens_used: int
    blocked_seconds: float  # the provider's pushback still in force


# How many limit keys the dashboard lists at most (a per-user limit has one per active user).
MAX_LISTED = 200


def limits_in_force(settings: Settings) -> list[LimitUsage]:
    """The limits with calls in the current window (or blocked), and what they have used."""
    if settings.redis_url is None or not settings.llm_rate_limits:
        return []
    client = redis_client(settings.redis_url)
    window_ms = settings.llm_rate_limit_window_seconds * 1000
    found: list[LimitUsage] = []
    for raw in client.scan_iter(match=KEY_PREFIX + "*:log", count=100):
        base = raw.decode()[: -len(":log")]
        name = base[len(KEY_PREFIX) :]
        provider_model = name.split(":user:")[0]
        limit = settings.llm_rate_limits.get(provider_model) or settings.llm_rate_limits.get("*")
        if limit is None:
            continue
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        live = cast(list[bytes], client.zrangebyscore(base + ":log", now_ms - window_ms, "+inf"))
        tokens = client.hmget(base + ":tokens", live) if live else []
        found.append(
            LimitUsage(
                key=name,
                requests_per_minute=limit.requests_per_minute,
                tokens_per_minute=limit.tokens_per_minute,
                requests_used=len(live),
                tokens_used=sum(int(value or 0) for value in tokens),
                blocked_seconds=max(0, int(client.pttl(base + ":block"))) / 1000,
            )
        )
        if len(found) >= MAX_LISTED:
            break
    return sorted(found, key=lambda usage: usage.key)
