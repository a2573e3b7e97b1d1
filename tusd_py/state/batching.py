"""Batcher: calls of concurrent requests, sent together.

Under load a process makes the same kind of call to a service (PostgreSQL, Redis) for many
requests at once. Each call alone pays a network write that wakes the service and a wait for
its answer; on these machines a loopback write that wakes another process costs 60-85 us of
CPU, more than the call's own work. A Batcher collects the calls that arrive while earlier
batches of the same kind are in flight and sends them as one batch (one statement over a set
of rows, one Redis pipeline), at most `max_in_flight` batches at a time. Under light load a
call goes alone, one event-loop turn later; under heavy load the batches grow, and the
per-round-trip costs are paid once per batch. Each call still gets its own answer, or its
own exception.

- Deadlines: a call waits at most for the batches ahead of it (each bounded by its
  service's timeouts) plus its own.
- Errors: an error of the whole batch (a lost connection, a timeout) is each call's error.
- Two calls with the same key never share a batch (the second waits for the next one).
- A caller that gives up (cancelled) before its batch is sent is dropped from it; one that
  gives up while its batch is in flight leaves the call done or not, as a lone call would.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Call = TypeVar("Call")
Answer = TypeVar("Answer")


class Batcher(Generic[Call, Answer]):
    """Runs calls in batches through `run_batch`, which answers each call of a batch in order
    (an answer, or the exception that call raises)."""

    def __init__(
        self,
        run_batch: Callable[[list[Call]], Awaitable[list[Answer | BaseException]]],
        key: Callable[[Call], Hashable],
        max_in_flight: int = 2,
        max_size: int = 500,
    ) -> None:
        self.run_batch = run_batch
        self.key = key
        self.max_in_flight = max_in_flight
        self.max_size = max_size
        self._waiting: deque[tuple[Call, asyncio.Future[Answer]]] = deque()
        self._in_flight = 0
        self._flush_scheduled = False
        #: batches sent and calls carried (for tests and the benchmark notes)
        self.batches = 0
        self.calls = 0

    async def submit(self, call: Call) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        # one loop turn later: calls that arrive in the same turn go together
        if not self._flush_scheduled and self._in_flight < self.max_in_flight and self._waiting:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight:
            batch = self._take_batch()
            if not batch:
                break
            self._in_flight += 1
            self.batches += 1
            self.calls += len(batch)
            task = asyncio.get_running_loop().create_task(self._send(batch))
            task.add_done_callback(self._sent)

    def _take_batch(self) -> list[tuple[Call, asyncio.Future[Answer]]]:
        batch: list[tuple[Call, asyncio.Future[Answer]]] = []
        keys: set[Hashable] = set()
        later: list[tuple[Call, asyncio.Future[Answer]]] = []
        while self._waiting and len(batch) < self.max_size:
            call, future = self._waiting.popleft()
            if future.done():  # its caller gave up (cancelled) before it was sent
                continue
            key = self.key(call)
            if key in keys:
                later.append((call, future))  # never one row twice in a batch
                continue
            keys.add(key)
            batch.append((call, future))
        self._waiting.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[tuple[Call, asyncio.Future[Answer]]]) -> None:
        try:
            answers = await self.run_batch([call for call, _ in batch])
        except BaseException as exc:  # every call of the batch gets the batch's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # cancelled while its batch ran: what was done stays done
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        if not task.cancelled():
            task.exception()  # retrieved: each caller has it already
        self._schedule()
