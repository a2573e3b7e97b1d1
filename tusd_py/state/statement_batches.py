"""Group statements: the hot statements of concurrent requests, sent to PostgreSQL together.

At 1,000 concurrent uploads a process runs hundreds of single-row statements a second: a
PATCH's read and guarded UPDATE, a POST's INSERT. Each alone costs a pool checkout, a
network write that wakes a PostgreSQL backend, a wait for its answer and, for a write, a
commit (a WAL flush). Measured on these machines, that was 40 % of a worker's event-loop
time at this load.

A Batcher collects the calls that arrive while earlier batches of the same kind are in
flight and sends them as ONE statement over a set of rows (PostgreSQL's json_to_recordset,
one JSON parameter, so the statement is prepared once whatever the batch size), at most
`max_in_flight` batches at a time. Under light load a call goes alone, as before, one event-
loop turn later; under heavy load the batches grow, and the per-statement costs are paid
once per batch. Each call still gets its own answer: the row it read, or whether its
guarded UPDATE matched.

What does not change:
- Durability: a write's caller is answered only after the statement that carries it has
  committed (autocommit: the statement is its transaction).
- Guards: every row of a batched UPDATE keeps its own guard (expected status, offset and
  version); a row whose guard fails is reported as a lost race to its own caller only.
- Deadlines: a call waits at most for the batches ahead of it (each bounded by the pool's
  timeout and the statement timeout) plus its own.
- Errors: a batch that fails because of its data (a constraint, say) is retried one call at
  a time, so only the faulty call fails; a lost connection or a pool timeout fails the
  calls of that batch, each with the same error a lone call would have raised.
- Two calls for the same upload never share a batch (the second waits for the next one),
  so a batch never updates one row twice.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

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


# --- the batched statements ------------------------------------------------------------


def _pg_type(column: sa.Column[Any]) -> str:
    from sqlalchemy.dialects import postgresql

    return column.type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]


def recordset(columns: Sequence[tuple[str, sa.Column[Any]]]) -> str:
    """`json_to_recordset(%(rows)s::json) AS v(name type, ...)`: the rows of one JSON array
    parameter as a table named v, each field typed as its column."""
    fields = ", ".join(f'"{name}" {_pg_type(column)}' for name, column in columns)
    return f"json_to_recordset(%(rows)s::json) AS v({fields})"


def json_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(rows, default=_json_value, separators=(",", ":"))


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()  # always aware (UTC) here: timestamptz reads it exactly
    raise TypeError(f"{type(value).__name__} is not a statement parameter")


def data_error(exc: BaseException) -> bool:
    """A batch failed because of what one of its rows holds, not because the database was
    unreachable or busy: worth retrying its calls one at a time."""
    return isinstance(exc, sa_exc.DBAPIError) and not isinstance(
        exc, sa_exc.OperationalError | sa_exc.TimeoutError
    )
