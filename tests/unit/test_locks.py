"""LocalLocks: one holder per upload, handover to a newcomer, 423 when the holder is stuck."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit._async import run, until
from tusd_protocol.errors import UploadLocked
from tusd_py.core.ports import HANDOVER, Holding
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


def test_receiving_holder_is_cancelled_with_the_handover_marker() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        never = asyncio.Event()
        entered = asyncio.Event()
        log: list[str] = []

        async def holder() -> str:
            async with locks.hold(ID) as holding:
                entered.set()
                holding.receiving = True
                try:
                    await never.wait()  # a receive() for body bytes that never come
                except asyncio.CancelledError as exc:
                    assert HANDOVER in exc.args
                    assert holding.stop_requested
                    assert holding.is_handover(exc)
                    log.append("handed over")
                finally:
                    holding.receiving = False
                # uncancelled: the holder can still save what it has and answer
                current = asyncio.current_task()
                assert current is not None and current.cancelling() == 0
                await asyncio.sleep(0.01)
                log.append("saved")
            return "answered"

        holder_task = asyncio.create_task(holder())
        await entered.wait()
        async with locks.hold(ID) as newcomer:
            log.append("newcomer in")
            assert not newcomer.stop_requested
        assert await holder_task == "answered"
        assert log == ["handed over", "saved", "newcomer in"]

    run(main)


def test_busy_holder_sees_stop_requested() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        entered = asyncio.Event()
        observed: list[bool] = []

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                entered.set()
                # busy elsewhere (not receiving): it is not cancelled, it must look
                await until(lambda: holding.stop_requested)
                observed.append(holding.stop_requested)

        holder_task = asyncio.create_task(holder())
        await entered.wait()
        async with locks.hold(ID):
            pass
        await holder_task
        assert observed == [True]
        assert not holder_task.cancelled()

    run(main)


def test_holder_that_does_not_let_go_makes_the_newcomer_423() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=0.1)
        entered, release = asyncio.Event(), asyncio.Event()

        async def stuck_holder() -> None:
            async with locks.hold(ID):
                entered.set()
                await release.wait()  # neither receiving nor looking at stop_requested

        holder_task = asyncio.create_task(stuck_holder())
        await entered.wait()
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
        assert not holder_task.done()
        release.set()
        await holder_task
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
        entered = asyncio.Event()
        verdicts: list[bool] = []

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                entered.set()
                holding.receiving = True
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as exc:
                    verdicts.append(holding.is_handover(exc))
                    raise

        task = asyncio.create_task(holder())
        await entered.wait()
        task.cancel()  # a shutdown, no newcomer
        with pytest.raises(asyncio.CancelledError):
            await task
        assert verdicts == [False]
        assert task.cancelled()
        assert not locks.is_held(ID)

    run(main)


def test_cancellation_with_another_message_is_not_a_handover() -> None:
    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        entered = asyncio.Event()
        verdicts: list[bool] = []

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                entered.set()
                # busy, not receiving: a newcomer only sets stop_requested
                await until(lambda: holding.stop_requested)
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as exc:
                    verdicts.append(holding.is_handover(exc))
                    raise

        task = asyncio.create_task(holder())
        await entered.wait()
        newcomer = asyncio.create_task(_hold_briefly(locks))
        await asyncio.sleep(0.05)
        task.cancel("server shutting down")
        with pytest.raises(asyncio.CancelledError):
            await task
        await newcomer
        assert verdicts == [False]

    run(main)


async def _hold_briefly(locks: LocalLocks) -> None:
    async with locks.hold(ID):
        pass


def test_shutdown_during_a_handover_is_not_swallowed() -> None:
    """A task cancelled both by a handover and by a shutdown must still end cancelled."""

    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        entered = asyncio.Event()
        verdicts: list[bool] = []

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                entered.set()
                holding.receiving = True
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as exc:
                    verdicts.append(holding.is_handover(exc))
                    if not verdicts[-1]:
                        raise
                finally:
                    holding.receiving = False
                await asyncio.sleep(0.01)  # saving what it has: the shutdown must land here

        task = asyncio.create_task(holder())
        await entered.wait()
        newcomer = asyncio.create_task(_hold_briefly(locks))
        await asyncio.sleep(0)  # the newcomer runs: it asks for the handover and waits
        assert task.cancelling() == 1  # the holder has not run since
        task.cancel()  # and the server shuts down, before the holder runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        await newcomer

    run(main)


def test_two_newcomers_at_once_cause_one_handover() -> None:
    """Two requests arriving together both ask the holder to stop; the holder must still see
    one handover and end up fully uncancelled (a leftover cancel request breaks later
    asyncio.timeout / TaskGroup bookkeeping in the holder)."""

    async def main() -> None:
        locks = LocalLocks(acquire_timeout=5)
        entered = asyncio.Event()
        log: list[object] = []

        async def holder() -> None:
            async with locks.hold(ID) as holding:
                entered.set()
                holding.receiving = True
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as exc:
                    log.append(holding.is_handover(exc))
                    if not log[-1]:
                        raise
                finally:
                    holding.receiving = False
                current = asyncio.current_task()
                assert current is not None
                log.append(current.cancelling())
                await asyncio.sleep(0.01)
                log.append("saved")

        task = asyncio.create_task(holder())
        await entered.wait()
        first = asyncio.create_task(_hold_briefly(locks))
        second = asyncio.create_task(_hold_briefly(locks))
        await asyncio.gather(task, first, second)
        assert log == [True, 0, "saved"]

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
