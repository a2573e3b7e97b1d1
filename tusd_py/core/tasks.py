"""Background tasks: how one is stopped."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended. Its cancellation is swallowed;
    a cancellation of the caller itself (a shutdown cut short) still goes through, which
    `with suppress(CancelledError): await task` would swallow too."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
