"""tusd_py.client and `tusd-py upload|status|cancel|download` against a real tusd-py server,
directly and through a proxy that throttles, cuts and stalls like a mobile network."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TUS, ServerProcess
from tests.flaky_proxy import FlakyProxy
from tests.integration._wire import stored_uploads, upload_id
from tusd_py.client import (
    AsyncTusClient,
    Cancelled,
    ResumeStore,
    RetryPolicy,
    TusClient,
    UploadFailed,
    UploadOptions,
)

pytestmark = pytest.mark.any_backend

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(max_retries=30, first_delay=0.05, max_delay=0.5)


def write_file(path: Path, size: int, seed: int = 0) -> str:
    """`size` pseudo-random bytes (cheap to make, not compressible); their sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    rotate = 0
    with open(path, "wb") as out:
        left = size
        while left:
            rotate = (rotate + 7) % 32
            piece = (block[rotate:] + block[:rotate])[: min(left, MiB)]
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def served_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, headers=TUS, timeout=60) as response:
        assert response.status_code == 200
        for block in response.iter_bytes(MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ResumeStore:
    return ResumeStore(tmp_path / "resume.sqlite3")


@pytest.fixture
def client(store: ResumeStore) -> Iterator[TusClient]:
    with TusClient(resume_store=store, retry=FAST_RETRY) as tus:
        yield tus


# --- the library ----------------------------------------------------------------------------


def test_a_file_goes_up_in_checksummed_chunks_and_comes_back_identical(
    server: ServerProcess, client: TusClient, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    digest = write_file(source, 12 * MiB + 123)
    seen: list[tuple[int, int | None]] = []
    result = client.upload(
        source,
        server.files_url,
        UploadOptions(metadata={"filename": "data.bin"}, chunk_size=5 * MiB),
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert result.size == 12 * MiB + 123 and result.resumed_from == 0
    assert served_sha256(result.url) == digest
    assert seen[-1] == (result.size, result.size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)  # never backwards
    info = client.status(result.url)
    assert (info.offset, info.length, info.complete) == (result.size, result.size, True)
    assert info.metadata == {"filename": "data.bin"}
    target = tmp_path / "back.bin"
    assert client.download(result.url, target) == result.size
    assert sha256_of(target) == digest


def test_a_parallel_upload_is_joined_from_its_pieces(
    server: ServerProcess, client: TusClient, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    digest = write_file(source, 21 * MiB + 5, seed=1)
    result = client.upload(
        source, server.files_url, UploadOptions(parallel=3, metadata={"filename": "big.bin"})
    )
    assert len(result.partials) == 3
    assert served_sha256(result.url) == digest
    assert client.status(result.url).metadata == {"filename": "big.bin"}


def test_a_stream_of_unknown_length_is_sent_with_a_deferred_length(
    server: ServerProcess, client: TusClient
) -> None:
    read_end, write_end = os.pipe()
    data = os.urandom(3 * MiB + 17)

    def feed() -> None:
        with open(write_end, "wb") as pipe:
            for start in range(0, len(data), 100_000):
                pipe.write(data[start : start + 100_000])

    feeder = threading.Thread(target=feed)
    feeder.start()
    with open(read_end, "rb") as pipe:
        result = client.upload(pipe, server.files_url, UploadOptions(chunk_size=MiB))
    feeder.join()
    assert result.size == len(data)
    assert served_sha256(result.url) == hashlib.sha256(data).hexdigest()


def test_a_cancelled_upload_resumes_from_the_servers_offset_as_one_upload(
    server: ServerProcess, store: ResumeStore, tmp_path: Path
) -> None:
    source = tmp_path / "resume.bin"
    digest = write_file(source, 40 * MiB, seed=2)
    stop = threading.Event()
    with FlakyProxy(server.port, rate=20 * MiB) as line:
        endpoint = f"{line.url}/files/"
        with TusClient(resume_store=store, retry=FAST_RETRY) as first:

            def progress(done: int, total: int | None) -> None:
                if done >= 8 * MiB:
                    stop.set()

            with pytest.raises(Cancelled):
                first.upload(
                    source,
                    endpoint,
                    UploadOptions(checksum="none", chunk_size=4 * MiB),
                    on_progress=progress,
                    cancel=stop,
                )
        kept = client_offset(store, source, endpoint)
        assert kept >= 4 * MiB
        with TusClient(resume_store=store, retry=FAST_RETRY) as second:
            result = second.upload(source, endpoint, UploadOptions(checksum="none"))
    assert result.resumed_from == kept
    assert served_sha256(f"{server.files_url}{upload_id(result.url)}") == digest
    assert len(stored_uploads(server) - server.uploads_baseline) == 1
    # finished: forgotten, so that the next run of the same file is a new upload
    assert store.find(_key(source), endpoint) is None


def test_a_cancelled_parallel_upload_resumes_every_piece(
    server: ServerProcess, store: ResumeStore, tmp_path: Path
) -> None:
    source = tmp_path / "pieces.bin"
    digest = write_file(source, 30 * MiB, seed=10)
    stop = threading.Event()
    options = UploadOptions(checksum="none", parallel=3, chunk_size=2 * MiB)
    with FlakyProxy(server.port, rate=20 * MiB) as line:
        endpoint = f"{line.url}/files/"
        with TusClient(resume_store=store, retry=FAST_RETRY) as first, pytest.raises(Cancelled):
            first.upload(
                source,
                endpoint,
                options,
                on_progress=lambda done, _: stop.set() if done >= 12 * MiB else None,
                cancel=stop,
            )
        entry = store.find(_key(source), endpoint)
        assert entry is not None and entry.url is None  # pieces started, not joined yet
        assert len(entry.partials) == 3 and all(entry.partials)
        with TusClient(resume_store=store, retry=FAST_RETRY) as second:
            result = second.upload(source, endpoint, options)
    assert result.resumed_from >= 6 * MiB
    assert list(result.partials) == list(entry.partials)  # the same pieces, continued
    assert served_sha256(f"{server.files_url}{upload_id(result.url)}") == digest
    assert len(stored_uploads(server) - server.uploads_baseline) == 4  # 3 pieces + 1 final


def client_offset(store: ResumeStore, source: Path, endpoint: str) -> int:
    entry = store.find(_key(source), endpoint)
    assert entry is not None and entry.url is not None
    response = httpx.head(entry.url, headers=TUS, timeout=10)
    return int(response.headers["upload-offset"])


def _key(source: Path) -> str:
    from tusd_py.client import fingerprint

    return fingerprint(source)


def test_the_async_client_uploads_in_parallel_and_downloads(
    server: ServerProcess, store: ResumeStore, tmp_path: Path
) -> None:
    source = tmp_path / "async.bin"
    digest = write_file(source, 11 * MiB, seed=3)
    target = tmp_path / "async-back.bin"

    async def main() -> tuple[str, int]:
        async with AsyncTusClient(resume_store=store, retry=FAST_RETRY) as tus:
            result = await tus.upload(source, server.files_url, UploadOptions(parallel=2))
            assert len(result.partials) == 2
            size = await tus.download(result.url, target)
            assert (await tus.status(result.url)).complete
            await tus.terminate(result.url)
            with pytest.raises(UploadFailed) as gone:
                await tus.status(result.url)
            assert gone.value.code == "ERR_GONE"
            return result.url, size

    _, size = asyncio.run(main())
    assert size == 11 * MiB and sha256_of(target) == digest


def test_a_download_resumes_its_partial_file_with_a_range(
    server: ServerProcess, client: TusClient, tmp_path: Path
) -> None:
    source = tmp_path / "dl.bin"
    digest = write_file(source, 6 * MiB, seed=4)
    url = client.upload(source, server.files_url).url
    target = tmp_path / "dl-back.bin"
    # an earlier run got 2 MiB and was killed: its partial file and what it knew
    (tmp_path / "dl-back.bin.part").write_bytes(source.read_bytes()[: 2 * MiB])
    etag = httpx.get(url, headers={"Range": "bytes=0-0"}).headers["etag"]
    (tmp_path / "dl-back.bin.part.json").write_text(json.dumps({"url": url, "etag": etag}))
    seen: list[int] = []
    assert client.download(url, target, on_progress=lambda done, _: seen.append(done)) == 6 * MiB
    assert seen[0] > 2 * MiB and seen[0] <= 3 * MiB  # it went on from 2 MiB
    assert sha256_of(target) == digest
    assert not (tmp_path / "dl-back.bin.part").exists()


def test_a_line_that_keeps_dropping_still_carries_a_checksummed_upload(
    server: ServerProcess, client: TusClient, tmp_path: Path
) -> None:
    source = tmp_path / "flaky.bin"
    digest = write_file(source, 24 * MiB, seed=5)
    with FlakyProxy(server.port, cut_every=3 * MiB, stall_chance=0.02, seed=7) as line:
        result = client.upload(source, f"{line.url}/files/")  # checksums on: 32 MiB chunks
        assert line.cuts >= 5
    assert served_sha256(f"{server.files_url}{upload_id(result.url)}") == digest


# --- the command line ---------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tusd_py", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def server_offset(store_path: Path, source: Path) -> int:
    """The offset of the upload the resume store remembers for `source` (0: none yet)."""
    if not store_path.exists():
        return 0
    for key, url in _entries(store_path):
        if key == _key(source) and url:
            response = httpx.head(url, headers=TUS, timeout=10)
            return int(response.headers.get("upload-offset", 0))
    return 0


def _entries(path: Path) -> list[tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT fingerprint, url FROM uploads"))


def test_upload_killed_three_times_resumes_each_time_to_one_identical_upload(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "200mib.bin"
    digest = write_file(source, 200 * MiB, seed=6)
    env = {"TUSD_PY_RESUME_STORE": str(tmp_path / "resume.sqlite3")}
    offsets: list[int] = []
    outputs: list[str] = []
    with FlakyProxy(server.port, rate=60 * MiB) as line:
        endpoint = f"{line.url}/files/"
        for _ in range(3):
            before = server_offset(tmp_path / "resume.sqlite3", source)
            run = cli(
                "upload", str(source), "--endpoint", endpoint, "--chunk-size", "8MiB", env=env
            )
            deadline = time.monotonic() + 60
            while server_offset(tmp_path / "resume.sqlite3", source) < before + 24 * MiB:
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            run.kill()  # SIGKILL: nothing is cleaned up
            run.wait()
            offsets.append(server_offset(tmp_path / "resume.sqlite3", source))
        last = cli("upload", str(source), "--endpoint", endpoint, env=env)
        out, err = last.communicate(timeout=120)
    outputs.append(err)
    assert last.returncode == 0, err
    assert offsets == sorted(offsets) and offsets[0] >= 24 * MiB
    assert offsets[-1] < 200 * MiB
    url = out.strip()
    assert f"resumed from {offsets[-1] / MiB:.1f} MiB of 200.0 MiB" in err
    assert served_sha256(f"{server.files_url}{upload_id(url)}") == digest
    assert len(stored_uploads(server) - server.uploads_baseline) == 1


def test_status_download_and_cancel_with_their_exit_codes(
    server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "report.csv"
    source.write_text("a,b\n1,2\n")
    env = {"TUSD_PY_RESUME_STORE": str(tmp_path / "resume.sqlite3")}
    out, err = cli(
        "upload", str(source), "-e", server.files_url, "-m", "team=blue", env=env
    ).communicate(timeout=60)
    url = out.strip()
    status = cli("status", url)
    text, _ = status.communicate(timeout=30)
    assert status.returncode == 0
    assert "offset:   8" in text and "state:    complete" in text
    assert "metadata: filename=report.csv" in text and "metadata: team=blue" in text
    assert "metadata: filetype=text/csv" in text
    download = cli("download", url, cwd=tmp_path / "..")
    got, _ = download.communicate(timeout=30)
    assert download.returncode == 0 and got.strip() == "report.csv"
    assert (tmp_path / ".." / "report.csv").read_text() == "a,b\n1,2\n"
    (tmp_path / ".." / "report.csv").unlink()
    cancel = cli("cancel", url)
    cancel.communicate(timeout=30)
    assert cancel.returncode == 0
    for args, code in [
        (("status", url), 4),  # gone
        (("status", f"{server.files_url}nosuchuploadnosuch"), 4),
        (("upload", str(tmp_path / "missing.bin"), "-e", server.files_url), 2),
        (("upload", str(source), "-e", "http://127.0.0.1:9/files/", "--retries", "1"), 3),
    ]:
        run = cli(*args, env=env)
        _, err = run.communicate(timeout=60)
        assert run.returncode == code, (args, err)
        assert err.startswith("tusd-py: "), err


def test_the_command_line_client_stays_small_while_uploading_a_gib(
    server: ServerProcess, tmp_path: Path
) -> None:
    import psutil

    source = tmp_path / "1gib.bin"
    digest = write_file(source, 1024 * MiB, seed=8)
    env = {"TUSD_PY_RESUME_STORE": str(tmp_path / "resume.sqlite3")}
    run = cli("upload", str(source), "--endpoint", server.files_url, "--parallel", "2", env=env)
    process = psutil.Process(run.pid)
    peak = 0
    while run.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    out, err = run.communicate()
    assert run.returncode == 0, err
    assert peak < 64 * MiB, f"peak RSS {peak / MiB:.1f} MiB"
    assert served_sha256(f"{server.files_url}{upload_id(out.strip())}") == digest
    source.unlink()


def test_upload_of_200_mib_finishes_through_a_line_that_cuts_and_stalls(
    server: ServerProcess, tmp_path: Path
) -> None:
    """examples/flaky-network: the connection is cut every 2-6 MiB and stalls now and then;
    `tusd-py upload` (checksums on, its defaults otherwise) still finishes, byte-identical."""
    source = tmp_path / "mobile.bin"
    digest = write_file(source, 200 * MiB, seed=9)
    env = {"TUSD_PY_RESUME_STORE": str(tmp_path / "resume.sqlite3")}
    with FlakyProxy(server.port, cut_every=4 * MiB, stall_chance=0.002, seed=11) as line:
        run = cli("upload", str(source), "--endpoint", f"{line.url}/files/", env=env)
        out, err = run.communicate(timeout=300)
        cuts = line.cuts
    assert run.returncode == 0, err
    assert cuts >= 20
    assert served_sha256(f"{server.files_url}{upload_id(out.strip())}") == digest
    # (a POST cut in its first MiB may leave an upload behind that the client never
    # learnt of; the server's expiry reclaims it)


def test_ctrl_c_stops_the_upload_with_130_and_the_next_run_resumes(
    server: ServerProcess, tmp_path: Path
) -> None:
    import signal

    source = tmp_path / "interrupted.bin"
    digest = write_file(source, 40 * MiB, seed=12)
    env = {"TUSD_PY_RESUME_STORE": str(tmp_path / "resume.sqlite3")}
    with FlakyProxy(server.port, rate=20 * MiB) as line:
        endpoint = f"{line.url}/files/"
        run = cli("upload", str(source), "-e", endpoint, "--chunk-size", "4MiB", env=env)
        deadline = time.monotonic() + 30
        while server_offset(tmp_path / "resume.sqlite3", source) < 8 * MiB:
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
        assert "interrupted; run the same command again to resume" in err
        kept = server_offset(tmp_path / "resume.sqlite3", source)
        again = cli("upload", str(source), "-e", endpoint, env=env)
        out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert f"resumed from {kept / MiB:.1f} MiB of 40.0 MiB" in err
    assert served_sha256(f"{server.files_url}{upload_id(out.strip())}") == digest


def test_upload_reads_standard_input_with_a_deferred_length(server: ServerProcess) -> None:
    data = os.urandom(9 * MiB + 5)
    run = subprocess.run(
        [sys.executable, "-m", "tusd_py", "upload", "-", "-e", server.files_url,
         "--chunk-size", "2MiB", "-m", "filename=dump.sql", "-H", "X-Trace: stdin-test"],
        input=data,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    url = run.stdout.decode().strip()
    assert hashlib.sha256(httpx.get(url, timeout=30).content).hexdigest() == (
        hashlib.sha256(data).hexdigest()
    )
    assert httpx.head(url, headers=TUS).headers["upload-metadata"] == "filename ZHVtcC5zcWw="


def test_cancelling_the_async_upload_task_keeps_what_was_acknowledged(
    server: ServerProcess, store: ResumeStore, tmp_path: Path
) -> None:
    source = tmp_path / "async-cancel.bin"
    digest = write_file(source, 30 * MiB, seed=13)
    options = UploadOptions(checksum="none", chunk_size=2 * MiB)

    async def main(endpoint: str) -> int:
        async with AsyncTusClient(resume_store=store, retry=FAST_RETRY) as tus:
            reached = asyncio.Event()
            task = asyncio.create_task(
                tus.upload(
                    source,
                    endpoint,
                    options,
                    on_progress=lambda done, _: reached.set() if done >= 6 * MiB else None,
                )
            )
            await asyncio.wait_for(reached.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            result = await tus.upload(source, endpoint, options)
            assert served_sha256(f"{server.files_url}{upload_id(result.url)}") == digest
            return result.resumed_from

    with FlakyProxy(server.port, rate=20 * MiB) as line:
        resumed_from = asyncio.run(main(f"{line.url}/files/"))
    assert resumed_from >= 4 * MiB
    assert len(stored_uploads(server) - server.uploads_baseline) == 1
