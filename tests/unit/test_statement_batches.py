"""Batched hot statements: the Batcher's grouping rules, and the batched PostgreSQL statements
answering each call as a lone statement would (tusd_py.state.statement_batches, postgres_hot)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy.exc as sa_exc

from tests.unit._async import run
from tusd_protocol.state import ConcatKind, Upload, UploadStatus
from tusd_py.state.batching import Batcher
from tusd_storage import EMPTY_LAYOUT

# --- the Batcher, with a recording batch runner -------------------------------------------


class Recorder:
    """A batch runner that records every batch and can be held until released."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, calls: list[Any]) -> list[Any]:
        self.batches.append(list(calls))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            return [
                ValueError(f"bad {call}") if str(call).startswith("bad") else f"done {call}"
                for call in calls
            ]
        finally:
            self.running -= 1


def test_calls_arriving_while_batches_are_in_flight_go_together_and_each_gets_its_answer() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher: Batcher[str, str] = Batcher(recorder, key=lambda c: c, max_in_flight=2)
        recorder.gate.clear()
        first = [asyncio.ensure_future(batcher.submit(f"a{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert recorder.batches == [["a0", "a1", "a2"]]  # one loop turn: one batch
        second = [asyncio.ensure_future(batcher.submit(f"b{i}")) for i in range(2)]
        await asyncio.sleep(0.01)
        third = [asyncio.ensure_future(batcher.submit(f"c{i}")) for i in range(40)]
        await asyncio.sleep(0.01)
        # two in flight: the third group waits, whole, for one of them to end
        assert recorder.batches == [["a0", "a1", "a2"], ["b0", "b1"]]
        recorder.gate.set()
        answers = await asyncio.gather(*first, *second, *third)
        assert answers == [f"done {c}" for c in ["a0", "a1", "a2", "b0", "b1"]] + [
            f"done c{i}" for i in range(40)
        ]
        assert recorder.batches[2] == [f"c{i}" for i in range(40)]
        assert recorder.most_running == 2
        assert (batcher.batches, batcher.calls) == (3, 45)

    run(main)


def test_two_calls_for_one_key_never_share_a_batch() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher: Batcher[str, str] = Batcher(recorder, key=lambda c: c[0], max_in_flight=1)
        answers = await asyncio.gather(*(batcher.submit(c) for c in ["x1", "y1", "x2", "x3"]))
        assert answers == ["done x1", "done y1", "done x2", "done x3"]
        # the second and third x wait for later batches, in their order
        assert recorder.batches == [["x1", "y1"], ["x2"], ["x3"]]

    run(main)


def test_a_batch_holds_at_most_max_size_calls_and_the_rest_follow_in_order() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher: Batcher[str, str] = Batcher(recorder, key=lambda c: c, max_size=3)
        answers = await asyncio.gather(*(batcher.submit(f"c{i}") for i in range(7)))
        assert answers == [f"done c{i}" for i in range(7)]
        assert [len(batch) for batch in recorder.batches] == [3, 3, 1]
        assert [c for batch in recorder.batches for c in batch] == [f"c{i}" for i in range(7)]

    run(main)


def test_an_answer_that_is_an_error_fails_only_its_own_call() -> None:
    async def main() -> None:
        batcher: Batcher[str, str] = Batcher(Recorder(), key=lambda c: c)
        results = await asyncio.gather(
            batcher.submit("ok1"), batcher.submit("bad"), batcher.submit("ok2"),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] == "done ok1" and results[2] == "done ok2"
        assert isinstance(results[1], ValueError)

    run(main)


def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_still_runs() -> None:
    async def main() -> None:
        failing = True

        async def runner(calls: list[str]) -> list[Any]:
            if failing:
                raise sa_exc.TimeoutError("no connection")
            return [f"done {c}" for c in calls]

        batcher: Batcher[str, str] = Batcher(runner, key=lambda c: c)
        results = await asyncio.gather(
            batcher.submit("a"), batcher.submit("b"), return_exceptions=True
        )
        assert all(isinstance(r, sa_exc.TimeoutError) for r in results)
        failing = False
        assert await batcher.submit("c") == "done c"

    run(main)


def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    async def main() -> None:
        recorder = Recorder()
        batcher: Batcher[str, str] = Batcher(recorder, key=lambda c: c, max_in_flight=1)
        recorder.gate.clear()
        running = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(batcher.submit("gone"))
        stays = asyncio.ensure_future(batcher.submit("b"))
        await asyncio.sleep(0.01)
        waiting.cancel()  # before its batch was sent: never sent
        running.cancel()  # while its batch runs: the batch goes on for the rest
        recorder.gate.set()
        assert await stays == "done b"
        assert recorder.batches == [["a"], ["b"]]

    run(main)


# --- the batched statements on a real PostgreSQL -------------------------------------------


def _upload(number: int) -> Upload:
    return Upload(
        id=f"batch{number:04d}",
        status=UploadStatus.RECEIVING,
        offset=0,
        length=1000,
        metadata_header="name eC5iaW4=",
        concat_kind=ConcatKind.NONE,
        concat_header=None,
        expires_at=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=number),
    )


async def _writes_answer_each_call_alone(
    repository: Any, batched: Any, refused: Upload, error: type[BaseException]
) -> None:
    """60 concurrent INSERTs, reads and guarded UPDATEs (half with a stale offset) go in
    batches, and each caller gets what a lone statement would have answered; `refused`, which
    the database refuses, fails its own INSERT only and the rest of its batch is written."""
    uploads = [_upload(n) for n in range(60)]
    batches, calls = batched.inserts.batches, batched.inserts.calls
    await asyncio.gather(
        *(repository.insert(u, {"name": b"x.bin"}, layout=EMPTY_LAYOUT) for u in uploads)
    )
    # they went together
    assert batched.inserts.batches - batches < batched.inserts.calls - calls == 60

    got = await asyncio.gather(*(repository.get(u.id) for u in uploads))
    assert got == uploads  # every field back as written, each to its caller
    assert await repository.get("nosuchupload") is None

    # half move from the state they read; the other half claim a stale offset: their guard
    # fails, in the same batches, and only they are told so
    stale = [dataclasses.replace(u, offset=5) if n % 2 else u for n, u in enumerate(uploads)]
    moved = await asyncio.gather(
        *(repository.transition(u, status=UploadStatus.RECEIVING, offset=100) for u in stale)
    )
    assert batched.transitions.batches < batched.transitions.calls == 60
    for n, result in enumerate(moved):
        if n % 2:
            assert result is None
        else:
            assert result is not None and result.offset == 100
            assert result.version == uploads[n].version + 1
    after = await asyncio.gather(*(repository.get(u.id) for u in uploads))
    assert [u.offset for u in after] == [0 if n % 2 else 100 for n in range(60)]

    good = [_upload(n) for n in range(100, 110)]
    results = await asyncio.gather(
        *(repository.insert(u, {}) for u in [*good[:5], refused, *good[5:]]),
        return_exceptions=True,
    )
    assert isinstance(results[5], error)
    assert [r for n, r in enumerate(results) if n != 5] == [None] * 10
    assert all(await asyncio.gather(*(repository.get(u.id) for u in good)))


def test_batched_statements_answer_each_call_as_a_lone_statement_would(
    postgres_databases: Any,
) -> None:
    from tusd_py.state.database import Database
    from tusd_py.state.migrations import upgrade_if_needed
    from tusd_py.state.sql import Repository

    url = postgres_databases.create()
    upgrade_if_needed(url)

    async def main() -> None:
        database = Database(url, pool_size=4, queue_timeout=5)
        repository = Repository(database)
        try:
            # an id longer than its column
            too_long = dataclasses.replace(_upload(999), id="x" * 65)
            await _writes_answer_each_call_alone(
                repository, repository._hot, too_long, sa_exc.DBAPIError
            )
        finally:
            await database.close()

    run(main, timeout=30)


# --- the grouped writes on SQLite ------------------------------------------------------------


def test_sqlite_writes_are_committed_in_groups_and_answer_each_call_alone(tmp_path: Any) -> None:
    """SQLite's hot writes (sqlite_groups.py): concurrent INSERTs and guarded UPDATEs share
    a transaction and its commit, with the same answers as PostgreSQL's batches."""
    from tusd_py.state.database import Database
    from tusd_py.state.migrations import upgrade
    from tusd_py.state.sql import Repository

    url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade(url)

    async def main() -> None:
        database = Database(url, queue_timeout=5)
        repository = Repository(database)
        assert repository._hot is None
        try:
            # SQLite keeps any length of text: its refusal is an id that exists
            existing = _upload(7000)
            await repository.insert(existing, {})
            await _writes_answer_each_call_alone(
                repository, repository._groups, existing, sa_exc.IntegrityError
            )
            assert await repository.get(existing.id) == existing
        finally:
            await database.close()

    run(main, timeout=30)
