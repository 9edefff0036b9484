"""Requests a day per caller (a user, or an anonymous client address), counted in Redis and reset
at midnight UTC: the Django + Supabase template's tier limits (seed 003).

One Lua call checks and counts, so concurrent requests on any number of web processes never
together pass the limit. A refused request is not counted. The day comes from an injectable
clock (tests set the time); each day has its own key, which expires a little after the day ends.
When Redis cannot answer, the limit fails open, like `rate_limit`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
import structlog

from conveyor.constants import REDIS_PREFIX
from conveyor.errors import RateLimited

log = structlog.get_logger(__name__)

KEY_PREFIX = f"{REDIS_PREFIX}daily-requests:"
# A day's key outlives its day by this much, so a clock a little behind Redis's still finds it.
KEY_GRACE = timedelta(hours=1)
OUTAGE_LOG_SECONDS = 10.0

# KEYS[1]: the caller's count for the day. ARGV: the limit, the key's lifetime in ms.
# Returns the count including this request, or -1 (not counted) when the limit was reached.
COUNT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return -1 end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return used
"""
# Give back a counted request (one later refused for credits); never below zero.
UNCOUNT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""


class DailyLimitExceeded(RateLimited):
    """You reached your plan's limit of API requests for today (UTC)."""


def utc_now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Counted:
    """A request counted against its caller's day."""

    key: str


class DailyLimits:
    """`limit` requests per caller per UTC day."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._client = client
        self._count = client.register_script(COUNT)
        self._uncount = client.register_script(UNCOUNT)
        self.clock = clock
        self._last_outage_log = -math.inf

    def hit(self, caller: str, limit: int) -> Counted | None:
        """Count one request of caller today; DailyLimitExceeded (429, Retry-After until midnight
        UTC) when it already made `limit`. None when Redis could not count it."""
        now = self.clock().astimezone(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        key = f"{KEY_PREFIX}{caller}:{now.date().isoformat()}"
        lifetime_ms = math.ceil((midnight - now + KEY_GRACE).total_seconds() * 1000)
        try:
            used = int(self._count(keys=[key], args=[limit, lifetime_ms]))
        except redis.RedisError as exc:
            self._outage(exc)
            return None
        if used < 0:
            raise DailyLimitExceeded(
                f"You reached your plan's limit of {limit} API requests a day; it resets at "
                f"{midnight:%Y-%m-%d %H:%M} UTC.",
                retry_after=max(1, math.ceil((midnight - now).total_seconds())),
                limit=limit,
                resets_at=midnight.isoformat(),
            )
        return Counted(key)

    def give_back(self, counted: Counted | None) -> None:
        """Uncount a request that was refused after it was counted."""
        if counted is None:
            return
        try:
            self._uncount(keys=[counted.key])
        except redis.RedisError as exc:
            self._outage(exc)

    def _outage(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        if now - self._last_outage_log >= OUTAGE_LOG_SECONDS:
            self._last_outage_log = now
            log.warning("daily_limit_unavailable", error=str(exc))
