"""The client's upload flow without a network (tusd_py/client/flow.py): each test scripts the
server's answers and reads the steps the flow takes."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from datetime import UTC, datetime

import pytest

from tusd_py.client.errors import UploadFailed
from tusd_py.client.flow import (
    CHECKSUMMED_CHUNK,
    MIN_CHUNK,
    Call,
    Capabilities,
    Created,
    Filled,
    Pause,
    Read,
    Reply,
    RetryPolicy,
    Step,
    UploadFlow,
    UploadJob,
    create_final,
    retry_after,
    split,
)

EP = "http://server/files/"
URL = "http://server/files/abc"
ALL = Capabilities(
    frozenset({"creation", "creation-with-upload", "creation-defer-length", "checksum"}),
    ("sha1", "md5", "xxh3"),
)
CORE = Capabilities(frozenset({"creation", "creation-defer-length"}))

Server = Callable[[Step], Reply | Filled | None]


def run(
    steps: Generator[Step, Reply | Filled | None, str], server: Server
) -> tuple[str, list[Step]]:
    """Drive a flow: every step goes to `server`, whose answer is sent back."""
    taken: list[Step] = []
    answer: Reply | Filled | None = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as stop:
            return str(stop.value), taken
        taken.append(step)
        answer = server(step)


def ok_created(offset: int = 0) -> Reply:
    return Reply(201, {"location": "/files/abc", "upload-offset": str(offset)})


def acknowledged(offset: int) -> Reply:
    return Reply(204, {"upload-offset": str(offset)})


def calls(steps: list[Step]) -> list[str]:
    return [
        f"{s.method} {s.body.start}-{s.body.end}" if s.body else s.method
        for s in steps
        if isinstance(s, Call)
    ]


class Tus:
    """A small honest server: stores offsets, can fail scripted requests."""

    def __init__(self, length: int | None, failures: dict[int, Reply] | None = None) -> None:
        self.length = length
        self.offset = 0
        self.failures = failures or {}
        self.count = 0
        #: bytes a failed request kept (a cut without a checksum)
        self.kept_on_failure = 0

    def __call__(self, step: Step) -> Reply | Filled | None:
        if not isinstance(step, Call):
            return None
        self.count += 1
        if self.count in self.failures:
            if step.body is not None and step.checksum is None:
                self.offset = step.body.start + self.kept_on_failure
            return self.failures[self.count]
        if step.method == "POST":
            if step.body is not None:
                self.offset = step.body.end
            return ok_created(self.offset)
        if step.method == "HEAD":
            headers = {"upload-offset": str(self.offset)}
            if self.length is not None:
                headers["upload-length"] = str(self.length)
            return Reply(200, headers)
        assert step.method == "PATCH" and step.body is not None
        assert step.headers["Upload-Offset"] == str(self.offset)
        if "Upload-Length" in step.headers:
            self.length = int(step.headers["Upload-Length"])
        self.offset = step.body.end
        return acknowledged(self.offset)


def flow(size: int | None, caps: Capabilities = ALL, **job: object) -> UploadFlow:
    return UploadFlow(UploadJob(EP, size, **job), caps, random.Random(1))  # type: ignore[arg-type]


def test_a_file_is_created_with_its_first_mib_and_the_rest_follows_in_chunks() -> None:
    mib = 1024 * 1024
    upload = flow(100 * mib, checksum="none", chunk_size=40 * mib)
    url, steps = run(upload.run(), Tus(100 * mib))
    assert url == URL
    assert calls(steps) == [
        f"POST 0-{mib}",  # the first MiB only: a POST cut in its body loses its bytes
        f"PATCH {mib}-{41 * mib}",
        f"PATCH {41 * mib}-{81 * mib}",
        f"PATCH {81 * mib}-{100 * mib}",
    ]
    assert Created(URL) in steps
    post = steps[0]
    assert isinstance(post, Call)
    assert post.headers["Upload-Length"] == str(100 * mib)
    assert post.headers["Content-Type"] == "application/offset+octet-stream"


def test_without_creation_with_upload_and_chunk_size_the_rest_goes_in_one_patch() -> None:
    _url, steps = run(flow(1000, CORE, checksum="none").run(), Tus(1000))
    assert calls(steps) == ["POST", "PATCH 0-1000"]


def test_checksums_prefer_xxh3_and_default_to_chunks_of_32_mib() -> None:
    size = 70 * 1024 * 1024
    upload = flow(size)
    assert upload.algorithm == "xxh3"
    _, steps = run(upload.run(), Tus(size))
    bodies = [s.body for s in steps if isinstance(s, Call) and s.body]
    mib = 2**20
    assert [b.end - b.start for b in bodies] == [mib, CHECKSUMMED_CHUNK, CHECKSUMMED_CHUNK, 5 * mib]
    assert all(
        isinstance(s, Call) and s.checksum == "xxh3" for s in steps if getattr(s, "body", None)
    )
    assert Capabilities(frozenset({"checksum"}), ("sha1", "md5")).checksum("auto") == "sha1"
    assert CORE.checksum("auto") is None
    with pytest.raises(UploadFailed, match="does not take sha512"):
        ALL.checksum("sha512")


def test_a_failed_patch_pauses_learns_the_offset_with_head_and_goes_on_from_there() -> None:
    server = Tus(1000, failures={3: Reply(503, {"retry-after": "7"})})
    server.kept_on_failure = 300  # no checksum: the cut request kept 300 bytes
    _, steps = run(flow(1000, CORE, checksum="none", chunk_size=500).run(), server)
    assert calls(steps) == ["POST", "PATCH 0-500", "PATCH 500-1000", "HEAD", "PATCH 800-1000"]
    pause = next(s for s in steps if isinstance(s, Pause))
    assert pause.seconds >= 7  # Retry-After is a floor


@pytest.mark.parametrize("status", [0, 409, 423, 429, 500, 502, 503, 504])
def test_what_is_retried(status: int) -> None:
    server = Tus(10, failures={2: Reply(status)})
    _url, steps = run(flow(10, CORE, checksum="none").run(), server)
    assert calls(steps) == ["POST", "PATCH 0-10", "HEAD", "PATCH 0-10"]


@pytest.mark.parametrize("status", [400, 403, 413, 415, 460])
def test_what_is_not_retried_ends_with_the_servers_code_and_sentence(status: int) -> None:
    refusal = Reply(status, text="ERR_SOMETHING: Because of this.")
    with pytest.raises(UploadFailed) as failed:
        run(flow(10, CORE, checksum="none").run(), Tus(10, failures={2: refusal}))
    assert (failed.value.status, failed.value.code) == (status, "ERR_SOMETHING")
    assert "Because of this." in failed.value.message


def test_retries_in_a_row_without_progress_are_limited() -> None:
    down = {n: Reply(0, error="connection refused") for n in range(2, 100)}
    retry = RetryPolicy(max_retries=3)
    with pytest.raises(UploadFailed) as failed:
        run(flow(10, CORE, checksum="none", retry=retry).run(), Tus(10, failures=down))
    assert failed.value.code == "ERR_NO_ANSWER"
    assert "connection refused" in failed.value.message


def test_backoff_grows_with_full_jitter_up_to_its_ceiling() -> None:
    policy = RetryPolicy(first_delay=0.5, max_delay=30)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.5), (2, 1), (3, 2), (10, 30), (20, 30)]:
        delays = [policy.delay(attempt, Reply(503), rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling / 2  # spread over the range, not stuck at 0


def test_retry_after_takes_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert retry_after(Reply(503, {"retry-after": "12"}), now) == 12
    date = Reply(503, {"retry-after": "Mon, 07 Dec 2026 12:00:30 GMT"})
    assert retry_after(date, now) == 30
    assert retry_after(Reply(503, {"retry-after": "soon"}), now) is None


def test_a_checksummed_chunk_lost_whole_is_halved_and_grows_back_after_success() -> None:
    size = 64 * 1024 * 1024
    lost = {n: Reply(0, error="reset") for n in (2, 4, 6)}  # POST, then three cut PATCHes
    server = Tus(size, failures=lost)
    upload = flow(size, Capabilities(frozenset({"creation", "checksum"}), ("sha1",)))
    _, steps = run(upload.run(), server)
    sizes = [s.body.end - s.body.start for s in steps if isinstance(s, Call) and s.body]
    assert sizes[:6] == [32 * 2**20, 16 * 2**20, 8 * 2**20, 4 * 2**20, 8 * 2**20, 16 * 2**20]
    assert server.offset == size
    assert MIN_CHUNK == 256 * 1024


def test_resuming_goes_on_from_the_servers_offset() -> None:
    server = Tus(1000)
    server.offset = 600
    upload = flow(1000, CORE, checksum="none", resume_url=URL)
    url, steps = run(upload.run(), server)
    assert calls(steps) == ["HEAD", "PATCH 600-1000"]
    assert upload.resumed and url == URL
    assert upload.resumed_from == 600 and upload.offset == 1000


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_resume_of_an_upload_that_is_gone_starts_anew(status: int) -> None:
    server = Tus(10, failures={1: Reply(status)})
    upload = flow(10, CORE, checksum="none", resume_url=URL)
    _, steps = run(upload.run(), server)
    assert calls(steps) == ["HEAD", "POST", "PATCH 0-10"]
    assert not upload.resumed


def test_a_stream_is_read_chunk_by_chunk_and_its_last_patch_tells_the_length() -> None:
    stream = iter([Filled(4, last=False), Filled(8, last=False), Filled(10, last=True)])

    def server(step: Step) -> Reply | Filled | None:
        if isinstance(step, Read):
            return next(stream)
        return tus(step)

    tus = Tus(None)
    _, steps = run(flow(None, CORE, checksum="none", chunk_size=4).run(), server)
    assert calls(steps) == ["POST", "PATCH 0-4", "PATCH 4-8", "PATCH 8-10"]
    post = steps[0]
    assert isinstance(post, Call) and post.headers["Upload-Defer-Length"] == "1"
    patches = [s for s in steps if isinstance(s, Call) and s.method == "PATCH"]
    assert ["Upload-Length" in p.headers for p in patches] == [False, False, True]
    assert patches[-1].headers["Upload-Length"] == "10"
    assert [s for s in steps if isinstance(s, Read)] == [Read(0, 4), Read(4, 8), Read(8, 12)]


def test_an_empty_stream_is_one_empty_patch_that_says_length_0() -> None:
    def server(step: Step) -> Reply | Filled | None:
        return Filled(0, last=True) if isinstance(step, Read) else tus(step)

    tus = Tus(None)
    _, steps = run(flow(None, CORE, checksum="none").run(), server)
    assert calls(steps) == ["POST", "PATCH 0-0"]
    assert tus.length == 0


def test_a_stream_needs_deferred_length_and_a_file_must_fit_the_servers_limit() -> None:
    with pytest.raises(UploadFailed, match="length up front"):
        run(flow(None, Capabilities(frozenset({"creation"}))).run(), Tus(None))
    small = Capabilities(frozenset({"creation"}), max_size=100)
    with pytest.raises(UploadFailed) as failed:
        run(flow(101, small).run(), Tus(101))
    assert failed.value.status == 413


def test_parallel_pieces_are_near_equal_and_never_below_the_minimum() -> None:
    assert split(100, 4, minimum=10) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert split(103, 4, minimum=10) == [(0, 26), (26, 52), (52, 78), (78, 103)]
    assert split(25, 4, minimum=10) == [(0, 13), (13, 25)]
    assert split(5, 4, minimum=10) == [(0, 5)]


def test_the_final_upload_names_its_partials_and_is_retried() -> None:
    job = UploadJob(EP, 20, metadata={"filename": "a.bin"})
    answers = iter([Reply(503), Reply(201, {"location": "/files/final"})])
    url, steps = run(
        create_final(job, ["http://server/files/p1", "http://server/files/p2"]),
        lambda step: next(answers) if isinstance(step, Call) else None,
    )
    assert url == "http://server/files/final"
    post = steps[0]
    assert isinstance(post, Call)
    assert post.headers["Upload-Concat"] == "final;http://server/files/p1 http://server/files/p2"
    assert post.headers["Upload-Metadata"] == "filename YS5iaW4="
    assert isinstance(steps[1], Pause)


def test_a_small_file_is_one_post_and_a_failed_post_is_retried_without_bytes() -> None:
    _, steps = run(flow(1000, ALL, checksum="none").run(), Tus(1000))
    assert calls(steps) == ["POST 0-1000"]
    server = Tus(1000, failures={1: Reply(0, error="reset")})
    _, steps = run(flow(1000, ALL, checksum="none").run(), server)
    assert calls(steps) == ["POST 0-1000", "POST", "PATCH 0-1000"]
    second = steps[2]
    assert isinstance(second, Call) and "Content-Type" not in second.headers
    _, steps = run(flow(1000, ALL, data_during_creation=False).run(), Tus(1000))
    assert calls(steps) == ["POST", "PATCH 0-1000"]
