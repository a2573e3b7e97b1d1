"""Hooks as Python functions: `--hooks-module package.module`, one function per hook point,
named after it (pre_create for pre-create). A function takes the event (a dict) and returns
None, an answer dict, or raises Reject; it may be async. A plain function runs in a worker
thread, so a slow one (a database lookup, say) does not stop the server's other requests.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..core.hooks import (
    Caller,
    HookAnswer,
    HookFailed,
    HookPoint,
    HookRejected,
    HookUpload,
    make_event,
)
from .payload import read_answer


def function_name(point: HookPoint) -> str:
    return point.value.replace("-", "_")


class PythonHooks:
    def __init__(self, module_name: str, timeout: float) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"--hooks-module {module_name}: cannot import it: {exc}") from exc
        self.source = f"{module_name}"
        self.timeout = timeout
        self.functions: dict[HookPoint, Callable[..., Any]] = {}
        for point in HookPoint:
            function = getattr(module, function_name(point), None)
            if function is None:
                continue
            if not callable(function):
                raise ValueError(
                    f"--hooks-module {module_name}: {function_name(point)} is not a function"
                )
            self.functions[point] = function

    def points(self) -> frozenset[HookPoint]:
        return frozenset(self.functions)

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        raw = await self._run(point, make_event(point, upload, caller))
        return read_answer(point, raw, self._source(point))

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        """A notifying event: the function returning (whatever it returns) takes it."""
        await self._run(point, dict(event))

    def _source(self, point: HookPoint) -> str:
        return f"{self.source}.{self.functions[point].__name__}"

    async def _run(self, point: HookPoint, event: dict[str, Any]) -> object:
        function = self.functions[point]
        source = self._source(point)
        try:
            async with asyncio.timeout(self.timeout):
                if inspect.iscoroutinefunction(function):
                    return await function(event)
                return await asyncio.to_thread(function, event)
        except HookRejected:
            raise
        except TimeoutError as exc:
            raise HookFailed(
                f"The {point.value} hook ({source}) did not answer within {self.timeout:g} s."
            ) from exc
        except Exception as exc:
            raise HookFailed(
                f"The {point.value} hook ({source}) raised {type(exc).__name__}: {exc}"
            ) from exc
