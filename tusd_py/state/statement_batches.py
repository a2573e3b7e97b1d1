"""Group statements: the hot statements of concurrent requests, sent to PostgreSQL together.

At 1,000 concurrent uploads a process runs hundreds of single-row statements a second: a
PATCH's read and guarded UPDATE, a POST's INSERT. Each alone costs a pool checkout, a
network write that wakes a PostgreSQL backend, a wait for its answer and, for a write, a
commit (a WAL flush). Measured on these machines, that was 40 % of a worker's event-loop
time at this load.

A Batcher (batching.py) collects the calls that arrive while earlier batches of the same
kind are in flight; here each batch goes as ONE statement over a set of rows (PostgreSQL's
json_to_recordset, one JSON parameter, so the statement is prepared once whatever the batch
size), at most `max_in_flight` batches at a time. Under light load a call goes alone, as
before, one event-loop turn later; under heavy load the batches grow, and the per-statement
costs are paid once per batch. Each call still gets its own answer: the row it read, or
whether its guarded UPDATE matched.

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

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

Row = Mapping[str, Any]
A = TypeVar("A")


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


def inserted_id(row: Mapping[str, Any]) -> str:
    """The upload an INSERT_UPLOAD row creates (two never share a batch)."""
    return str(row["v_id"])


def moved_id(row: Mapping[str, Any]) -> str:
    """The upload a TRANSITION_UPLOAD row moves (two never share a batch)."""
    return str(row["old_id"])


def data_error(exc: BaseException) -> bool:
    """A batch failed because of what one of its rows holds, not because the database was
    unreachable or busy: worth retrying its calls one at a time."""
    return isinstance(exc, sa_exc.DBAPIError) and not isinstance(
        exc, sa_exc.OperationalError | sa_exc.TimeoutError
    )


async def each_on_data_error(
    rows: list[Row],
    run: Callable[[Sequence[Row]], Awaitable[None]],
    answer: Callable[[Row], A],
) -> list[A | BaseException]:
    """`run(rows)` as one batch (one statement, one transaction); if it fails on its data,
    run the rows one at a time, so that only the row at fault fails: each row's `answer`,
    or its error."""
    try:
        await run(rows)
    except Exception as exc:
        if len(rows) == 1 or not data_error(exc):
            raise
    else:
        return [answer(row) for row in rows]
    answers: list[A | BaseException] = []
    for row in rows:
        try:
            await run([row])
        except Exception as exc:
            if not data_error(exc):
                raise
            answers.append(exc)
        else:
            answers.append(answer(row))
    return answers
