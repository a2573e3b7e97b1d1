"""Graceful shutdown under uvicorn: drain on SIGTERM, and exit 0 afterwards.

uvicorn stops accepting on SIGTERM (or SIGINT), lets requests in flight finish within its
`timeout_graceful_shutdown`, then runs the lifespan shutdown. Two things it does not do:
- tell the application at once, so that uploads in flight can save what they received and
  answer instead of running until they are cancelled (their bytes lost): `on_exit_signal`
  chains a callback in front of uvicorn's own handler;
- exit 0: after a graceful shutdown it raises the signal again with the handlers that were
  there before it started, which kills the process with that signal. `exit_quietly`
  installs handlers that make that second signal do nothing, so `serve` returns 0.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_quietly() -> None:
    """Before uvicorn runs: the signal it raises again after shutting down is ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in EXIT_SIGNALS:
        signal.signal(sig, lambda signum, frame: None)


def on_exit_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` in the running loop when SIGTERM or SIGINT arrives, then whatever
    handler was installed before (uvicorn's). Returns a function that puts those handlers
    back. Outside the main thread (an embedding server) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous[signal.Signals(signum)]
        if callable(chained):
            chained(signum, frame)
        elif chained == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in EXIT_SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return restore
