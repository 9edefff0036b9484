"""A per-key rate limit in Redis (GCRA): `rate` a minute sustained, `burst` at once.

One Lua call per request keeps the decision atomic across web processes and hosts; the clock is
Redis's, so hosts whose clocks disagree still share one schedule. When Redis cannot answer, the
limit fails open: refusing every anonymous caller during an outage would be worse than none.
"""

from __future__ import annotations

import math
import time

import redis
import structlog

from conveyor.constants import REDIS_PREFIX

log = structlog.get_logger(__name__)

KEY_PREFIX = f"{REDIS_PREFIX}ratelimit:"
# An outage is logged at most this often, not once per request.
OUTAGE_LOG_SECONDS = 10.0

# KEYS[1]: the key's theoretical arrival time (TAT). ARGV: emission interval, burst tolerance
# (both in ms). Returns 0 when allowed, else the ms to wait (Lua numbers reach Redis as integers,
# so both are rounded up).
GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - tolerance
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now))
return 0
"""


class RateLimiter:
    """Allow `rate` hits a minute per key, `burst` of them back to back."""

    def __init__(self, client: redis.Redis, *, rate: int, burst: int) -> None:
        self._client = client
        self._script = client.register_script(GCRA)
        self._interval_ms = 60_000 / rate
        self._tolerance_ms = self._interval_ms * burst
        self._last_outage_log = -math.inf

    def hit(self, key: str) -> float:
        """Count one hit for key: 0 if allowed, else the seconds until the next one would be."""
        try:
            wait_ms = self._script(
                keys=[KEY_PREFIX + key], args=[self._interval_ms, self._tolerance_ms]
            )
        except redis.RedisError as exc:
            now = time.monotonic()
            if now - self._last_outage_log >= OUTAGE_LOG_SECONDS:
                self._last_outage_log = now
                log.warning("rate_limit_unavailable", error=str(exc))
            return 0.0
        return float(wait_ms) / 1000
