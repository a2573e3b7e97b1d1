"""Shared rate limits that never fail a request: when the shared buckets (Redis) cannot be
asked, this instance counts alone for a while, and says so once."""

from __future__ import annotations

import logging

from .policy import Clock, RateLimiter

log = logging.getLogger("tusd_py.admission")


class FallbackRateLimiter:
    """Asks `shared`; when it fails, asks `local` instead, and leaves `shared` alone for
    `pause` seconds (a Redis that is down would otherwise cost every request a timeout)."""

    def __init__(
        self, shared: RateLimiter, local: RateLimiter, clock: Clock, pause: float = 5.0
    ) -> None:
        self.shared = shared
        self.local = local
        self.clock = clock
        self.pause = pause
        self.down = False
        self._retry_at = 0.0

    async def acquire(self, client: str) -> float:
        if self.clock() >= self._retry_at:
            try:
                wait = await self.shared.acquire(client)
            except Exception as exc:  # whatever it is, the limiter must not fail the request
                self._retry_at = self.clock() + self.pause
                if not self.down:
                    self.down = True
                    log.warning(
                        "shared rate limits unavailable (%s); each instance counts alone "
                        "until they answer again",
                        exc,
                    )
            else:
                if self.down:
                    self.down = False
                    log.warning("shared rate limits available again")
                return wait
        return await self.local.acquire(client)
