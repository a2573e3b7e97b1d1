"""HostLocks: one holder per upload among the processes of one host (`serve --workers N`
without Redis). Record locks belong to processes, so the other holder here is a real child
process running HostLocks on the same directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit._async import run
from tusd_protocol.errors import UploadLocked
from tusd_py.state.host_locks import HostLocks, lock_offset

ID = "abcdefghijklmnop"

#: a child process that holds ID until it is asked to let go (or, with "stubborn", never),
#: like a request waiting for body bytes; it says what happens on stdout
HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from tusd_py.state.host_locks import HostLocks

    async def main() -> None:
        locks = HostLocks(Path(sys.argv[1]), acquire_timeout=5)
        await locks.start()
        async with locks.hold(sys.argv[2]) as holding:
            print("holding", flush=True)
            if sys.argv[3] == "stubborn":
                await asyncio.sleep(3600)
            holding.receiving = True
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError as exc:
                assert holding.is_handover(exc)
                print("handed over", flush=True)
            holding.receiving = False
            await asyncio.sleep(0.05)  # saves what it has
            print("saved", flush=True)
        await asyncio.sleep(3600)  # stays alive: the lock went back because it let go

    asyncio.run(main())
    """
)


class Holder:
    def __init__(self, directory: Path, upload_id: str, behaviour: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory), upload_id, behaviour],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read_line() == "holding"

    def read_line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


def start_holder(
    holders: list[Holder], directory: Path, upload_id: str = ID, behaviour: str = "lets go"
) -> Holder:
    holder = Holder(directory, upload_id, behaviour)
    holders.append(holder)
    return holder


async def started(directory: Path, acquire_timeout: float = 5) -> HostLocks:
    locks = HostLocks(directory, acquire_timeout=acquire_timeout)
    await locks.start()
    return locks


def test_a_holder_in_another_process_is_asked_to_let_go(
    tmp_path: Path, holders: list[Holder]
) -> None:
    holder = start_holder(holders, tmp_path)

    async def main() -> float:
        locks = await started(tmp_path)
        try:
            assert await locks.held_anywhere(ID)
            began = time.monotonic()
            async with locks.hold(ID):
                took = time.monotonic() - began
                assert locks.is_held(ID)
            return took
        finally:
            await locks.stop()

    took = run(main)
    # the other process was cancelled with the handover marker and saved before we got it
    assert [holder.read_line(), holder.read_line()] == ["handed over", "saved"]
    assert took < 2.0, f"the handover took {took:.2f} s"


def test_a_holder_that_does_not_let_go_makes_the_newcomer_423(
    tmp_path: Path, holders: list[Holder]
) -> None:
    start_holder(holders, tmp_path, behaviour="stubborn")

    async def main() -> float:
        locks = await started(tmp_path, acquire_timeout=0.3)
        try:
            began = time.monotonic()
            with pytest.raises(UploadLocked) as refused:
                async with locks.hold(ID):
                    pytest.fail("two processes held one upload")
            assert refused.value.headers["Retry-After"] == "2"
            assert not locks.is_held(ID)  # the local lock went back too
            return time.monotonic() - began
        finally:
            await locks.stop()

    took = run(main)
    assert 0.3 <= took < 2.0


def test_wait_false_answers_423_at_once_when_another_process_holds(
    tmp_path: Path, holders: list[Holder]
) -> None:
    holder = start_holder(holders, tmp_path)

    async def main() -> None:
        locks = await started(tmp_path)
        try:
            with pytest.raises(UploadLocked):
                async with locks.hold(ID, wait=False):
                    pytest.fail("two processes held one upload")
        finally:
            await locks.stop()

    run(main)
    assert holder.process.poll() is None  # and nobody was asked to let go


def test_other_uploads_are_not_held_up(tmp_path: Path, holders: list[Holder]) -> None:
    start_holder(holders, tmp_path, behaviour="stubborn")

    async def main() -> None:
        locks = await started(tmp_path, acquire_timeout=0.3)
        try:
            other = "q" * 16
            assert lock_offset(other) != lock_offset(ID)
            assert not await locks.held_anywhere(other)
            async with locks.hold(other, wait=False):
                assert await locks.held_anywhere(ID)
        finally:
            await locks.stop()

    run(main)


def test_a_process_that_dies_holding_a_lock_gives_it_back(
    tmp_path: Path, holders: list[Holder]
) -> None:
    holder = start_holder(holders, tmp_path, behaviour="stubborn")
    inbox = tmp_path / f"{holder.process.pid}.sock"
    assert inbox.exists()
    os.kill(holder.process.pid, signal.SIGKILL)
    holder.process.wait(10)

    async def main() -> None:
        locks = await started(tmp_path, acquire_timeout=0.5)
        try:
            assert not await locks.held_anywhere(ID)
            async with locks.hold(ID, wait=False):
                pass
            # a newcomer that has to ask clears the dead process's inbox on the way
            locks._ask_others_to_stop(ID)
            assert not inbox.exists()
        finally:
            await locks.stop()

    run(main)


def test_one_holder_at_a_time_within_a_process(tmp_path: Path) -> None:
    async def main() -> list[str]:
        locks = await started(tmp_path)
        events: list[str] = []

        async def request(name: str) -> None:
            async with locks.hold(ID):
                events.append(f"{name} in")
                await asyncio.sleep(0.02)
                events.append(f"{name} out")

        try:
            await asyncio.gather(request("a"), request("b"))
            assert not await locks.held_anywhere(ID)
        finally:
            await locks.stop()
        return events

    assert run(main) == ["a in", "a out", "b in", "b out"]


def test_two_ids_on_one_byte_keep_it_until_both_let_go(
    tmp_path: Path, holders: list[Holder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If two ids ever hashed to one offset, releasing one must not free the other."""
    monkeypatch.setattr("tusd_py.state.host_locks.lock_offset", lambda upload_id: 7)

    async def main() -> None:
        locks = await started(tmp_path)
        try:
            async with locks.hold("a" * 16):
                async with locks.hold("b" * 16):
                    pass
                # "a" still holds byte 7: another process must not get it
                probe = subprocess.run(
                    [sys.executable, "-c", PROBE, str(tmp_path / "uploads.lock")],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert probe.stdout.strip() == "held", probe.stderr
        finally:
            await locks.stop()

    run(main, timeout=40)


PROBE = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 7)
        print("free")
    except OSError:
        print("held")
    """
)


def test_too_long_a_directory_is_refused_with_a_sentence(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)

    async def main() -> None:
        locks = HostLocks(deep)
        with pytest.raises(ValueError, match="shorter --data-dir"):
            await locks.start()

    run(main)


# --- tenure: a process believes its memory of an upload only while no other held it since


def test_a_process_forgets_an_upload_that_another_process_held_since(
    tmp_path: Path, holders: list[Holder]
) -> None:
    forgotten: list[str] = []

    async def main() -> None:
        locks = HostLocks(tmp_path, acquire_timeout=5, forget=forgotten.append)
        await locks.start()
        try:
            async with locks.hold(ID):
                pass
            assert locks.is_tenured(ID)
            forgotten.clear()
            async with locks.hold(ID):  # nobody else held it: what we remember stands
                pass
            assert forgotten == [] and locks.is_tenured(ID)
            holder = await asyncio.to_thread(start_holder, holders, tmp_path)
            assert not locks.is_tenured(ID)  # the other process holds it now
            async with locks.hold(ID):  # it lets go; what it wrote may be newer than ours
                assert forgotten == [ID]
                assert locks.is_tenured(ID)
            assert holder.read_line() == "handed over"
            assert not locks.is_tenured("q" * 16)  # never held here
        finally:
            await locks.stop()

    run(main, timeout=30)


def test_where_record_locks_fail_one_process_keeps_locks_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno as errno_module

    def no_locks(*args: object) -> None:
        raise OSError(errno_module.ENOLCK, "No locks available")

    monkeypatch.setattr("tusd_py.state.host_locks.fcntl.lockf", no_locks)

    async def main() -> None:
        alone = HostLocks(tmp_path / "a", shared_required=False)
        await alone.start()
        try:
            assert not alone.shared
            async with alone.hold(ID):
                assert alone.is_held(ID) and await alone.held_anywhere(ID)
            assert alone.is_tenured(ID)  # alone, every write is its own
        finally:
            await alone.stop()
        workers = HostLocks(tmp_path / "b", shared_required=True)
        with pytest.raises(OSError, match="cannot share upload locks"):
            await workers.start()

    run(main)
