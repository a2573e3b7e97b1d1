"""RedisRateLimiter: token buckets that every instance shares (admission's RateLimiter).

One script per check does the bucket arithmetic atomically in Redis, with the Redis
server's clock (TIME), so instances whose clocks differ still agree. A bucket is one small
hash, `<prefix>ratelimit:<client>`, that expires once it would be full again: idle clients
cost nothing. Failures raise BackendUnavailable; admission then counts in the process
(admission.fallback), so a Redis outage never fails a request.
"""

from __future__ import annotations

import asyncio
import math

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..core.ports import BackendUnavailable

#: KEYS[1] bucket; ARGV[1] rate per second, ARGV[2] burst, ARGV[3] TTL in ms.
#: Returns {1, "0"} when a token was taken, else {0, seconds until there is one}.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {taken, tostring(wait)}
"""

#: a client key longer than this is cut (with --behind-proxy, clients write their own)
MAX_CLIENT_KEY = 100


class RedisRateLimiter:
    def __init__(
        self,
        redis: Redis,
        rate: float,
        burst: int,
        prefix: str = "tusd:",
        timeout: float = 1.0,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.redis = redis
        self.rate = rate
        self.burst = burst
        self.prefix = f"{prefix}ratelimit:"
        #: a bucket left alone this long is full again, and may as well not exist
        self.ttl_ms = math.ceil(burst / rate * 1000) + 1000
        #: a rate check waits at most this long for Redis (then admission counts alone)
        self.timeout = timeout
        self._take = redis.register_script(TAKE)

    async def acquire(self, client: str) -> float:
        key = self.prefix + client[:MAX_CLIENT_KEY]
        try:
            async with asyncio.timeout(self.timeout):
                taken, wait = await self._take(
                    keys=[key], args=[repr(self.rate), self.burst, self.ttl_ms]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"Redis: {exc or type(exc).__name__}") from exc
        return 0.0 if int(taken) == 1 else float(wait)
