"""Running async tests from synchronous test functions, with a bound on how long they take."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (on the running loop) until condition() holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)
