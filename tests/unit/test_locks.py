"""LocalLocks: one holder per upload, handover to a newcomer, 423 when the holder is stuck."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit._async import run, until
from tusd_protocol.errors import UploadLocked
from tusd_py.core.ports import HANDOVER, Holding, UploadLocks
from tusd_py.state.local_locks import LocalLocks

ID = "abcdefghijklmnop"


def test_one_holder_at_a_time() -> None:
    async def main() -> list[str]:
        locks = LocalLocks(acquire_timeout=5)
        events: list[str] = []

        async def request(name: str) -> None:
            async with locks.hold(ID) as holding:
                events.append(f"{name} in")
                # a busy holder that checks stop_requested only at the end
                await asyncio.sleep(0.02)
                events.append(f"{name} out")
                assert holding.upload_id == ID

        await asyncio.gather(request("a"), request("b"), request("c"))
        return events

    events = run(main)
    assert events == ["a in", "a out", "b in", "b out", "c in", "c out"]


def test_different_uploads_do_not_wait_for_each_other() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=0.2)
        async with locks.hold("a" * 16), locks.hold("b" * 16, wait=False):
            assert locks.is_held("a" * 16) and locks.is_held("b" * 16)

    run(main)


def test_released_locks_are_forgotten() -> None:
    async def main() -> LocalLocks:
        locks = LocalLocks()
        async with locks.hold(ID):
            assert locks.is_held(ID)
        assert not locks.is_held(ID)
        return locks

    locks = run(main)
    assert locks._entries == {}


def test_lock_is_released_when_the_holder_raises() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=0.2)
        with pytest.raises(RuntimeError):
            async with locks.hold(ID):
                raise RuntimeError("boom")
        assert not locks.is_held(ID)
        async with locks.hold(ID, wait=False):
            pass

    run(main)


async def hold(
    locks: UploadLocks,
    entered: asyncio.Event,
    log: list[str],
    *,
    receiving: bool = True,
    looks: bool = False,
    waits: bool = True,
    release: asyncio.Event | None = None,
) -> None:
    """A request holding ID, logging what happens to it:
    1. with `looks`, it is busy elsewhere (not receiving: a newcomer cannot cancel it) until
       it sees stop_requested: "asked";
    2. with `waits`, it waits for `release` (default: never), as if for body bytes when
       `receiving`; cancelled, it logs "handed over" and goes on, or "cancelled" and re-raises;
    3. it saves what it has (a moment) with its task's "cancelling=N" count, then "saved"."""
    async with locks.hold(ID) as holding:
        entered.set()
        if looks:
            await until(lambda: holding.stop_requested)
            log.append("asked")
        if waits:
            holding.receiving = receiving
            try:
                await (release or asyncio.Event()).wait()
            except asyncio.CancelledError as exc:
                if not holding.is_handover(exc):
                    log.append("cancelled")
                    raise
                assert HANDOVER in exc.args and holding.stop_requested
                log.append("handed over")
            finally:
                holding.receiving = False
        current = asyncio.current_task()
        assert current is not None
        log.append(f"cancelling={current.cancelling()}")
        await asyncio.sleep(0.01)
        log.append("saved")


async def start_holder(locks: UploadLocks, log: list[str], **behaviour: Any) -> asyncio.Task[None]:
    """hold() in a task of its own, once it holds the lock."""
    entered = asyncio.Event()
    task = asyncio.create_task(hold(locks, entered, log, **behaviour))
    await entered.wait()
    return task


async def hold_briefly(locks: UploadLocks) -> None:
    async with locks.hold(ID):
        pass


def test_receiving_holder_is_cancelled_with_the_handover_marker() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        log: list[str] = []
        holder = await start_holder(locks, log)
        async with locks.hold(ID) as newcomer:
            log.append("newcomer in")
            assert not newcomer.stop_requested
        await holder
        # uncancelled: the holder could still save what it had and answer
        assert log == ["handed over", "cancelling=0", "saved", "newcomer in"]
        assert not holder.cancelled()

    run(main)


def test_busy_holder_sees_stop_requested() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        log: list[str] = []
        # busy elsewhere (not receiving): it is not cancelled, it must look
        holder = await start_holder(locks, log, receiving=False, looks=True, waits=False)
        async with locks.hold(ID):
            log.append("newcomer in")
        await holder
        assert log == ["asked", "cancelling=0", "saved", "newcomer in"]
        assert not holder.cancelled()

    run(main)


def test_holder_that_does_not_let_go_makes_the_newcomer_423() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=0.1)
        release = asyncio.Event()
        log: list[str] = []
        # neither receiving nor looking at stop_requested
        holder = await start_holder(locks, log, receiving=False, release=release)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UploadLocked) as info:
            async with locks.hold(ID):
                pytest.fail("the newcomer must not get the lock")
        waited = loop.time() - started
        assert info.value.status == 423
        assert info.value.code == "ERR_UPLOAD_LOCKED"
        assert "Retry-After" in info.value.headers
        assert 0.09 <= waited < 2
        assert not holder.done()
        release.set()
        await holder
        assert log == ["cancelling=0", "saved"]
        # the failed newcomer left nothing behind: the next request gets the lock at once
        async with locks.hold(ID, wait=False):
            pass
        assert locks._entries == {}

    run(main)


def test_wait_false_raises_423_immediately() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=30)
        async with locks.hold(ID) as holding:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UploadLocked) as info:
                async with locks.hold(ID, wait=False):
                    pass
            assert loop.time() - started < 1
            assert info.value.status == 423
            # and the holder is not asked to stop by a request that does not wait
            assert not holding.stop_requested

    run(main)


def test_real_cancellation_is_not_a_handover() -> None:
    async def main() -> None:
        locks = LocalLocks()
        log: list[str] = []
        holder = await start_holder(locks, log)
        holder.cancel()  # a shutdown, no newcomer
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert log == ["cancelled"]
        assert holder.cancelled()
        assert not locks.is_held(ID)

    run(main)


def test_cancellation_with_another_message_is_not_a_handover() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        log: list[str] = []
        # busy, not receiving: a newcomer only sets stop_requested
        holder = await start_holder(locks, log, receiving=False, looks=True)
        newcomer = asyncio.create_task(hold_briefly(locks))
        await asyncio.sleep(0.05)
        holder.cancel("server shutting down")
        with pytest.raises(asyncio.CancelledError):
            await holder
        await newcomer
        assert log == ["asked", "cancelled"]

    run(main)


def test_shutdown_during_a_handover_is_not_swallowed() -> None:
    """A task cancelled both by a handover and by a shutdown must still end cancelled."""

    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        log: list[str] = []
        holder = await start_holder(locks, log)
        newcomer = asyncio.create_task(hold_briefly(locks))
        await asyncio.sleep(0)  # the newcomer runs: it asks for the handover and waits
        assert holder.cancelling() == 1  # the holder has not run since
        holder.cancel()  # and the server shuts down, before the holder runs again
        with pytest.raises(asyncio.CancelledError):
            await holder
        await newcomer
        assert "saved" not in log

    run(main)


def test_two_newcomers_at_once_cause_one_handover() -> None:
    """Two requests arriving together both ask the holder to stop; the holder must still see
    one handover and end up fully uncancelled (a leftover cancel request breaks later
    asyncio.timeout / TaskGroup bookkeeping in the holder)."""

    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        log: list[str] = []
        holder = await start_holder(locks, log)
        first = asyncio.create_task(hold_briefly(locks))
        second = asyncio.create_task(hold_briefly(locks))
        await asyncio.gather(holder, first, second)
        assert log == ["handed over", "cancelling=0", "saved"]

    run(main)


def test_holding_without_a_task_is_never_a_handover() -> None:
    holding = Holding(ID, task=None)
    holding.request_stop()
    assert holding.stop_requested
    assert not holding.is_handover(asyncio.CancelledError(HANDOVER))


def test_request_stop_does_not_cancel_a_finished_task() -> None:
    async def main() -> None:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        holding = Holding(ID, task=task)
        holding.receiving = True
        holding.request_stop()  # must not raise
        assert holding.stop_requested

    run(main)
