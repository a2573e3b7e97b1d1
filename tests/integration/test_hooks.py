"""Blocking hooks against a real server: pre-access (rejection, the caller's subject and the
owner check on every method), pre-create (rejection, metadata, chosen id, failures) and
pre-terminate, delivered by a Python module and by a webhook (docs/hooks.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration._hookd import Hookd
from tests.integration._wire import (
    TUS,
    assert_error,
    create,
    metadata,
    patch,
    post,
    state_rows,
    stored_uploads,
    upload_id,
)

MODULE = ["--hooks-module", "tests.integration.hooks_sample", "--hooks-timeout", "2"]
ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}


@pytest.fixture
def hooked(server_factory: Any, tmp_path: Path) -> tuple[ServerProcess, Path]:
    log = tmp_path / "hooks.jsonl"
    server = server_factory(MODULE, env={"TUSD_TEST_HOOKS_LOG": str(log)})
    return server, log


@pytest.fixture
def http(hooked: tuple[ServerProcess, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooked[0].base_url, headers=TUS, timeout=30) as client:
        yield client


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# --- pre-create ------------------------------------------------------------------------


def test_pre_create_rejects_with_its_status_code_and_message_and_nothing_is_created(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    response = post(http, 10, meta=metadata(filename="setup.exe"))
    assert_error(response, 422, "ERR_FILE_TYPE")
    assert "No programs." in response.text
    assert stored_uploads(hooked[0]) == set()


def test_pre_create_replaces_the_metadata_and_tells_the_hook_what_the_client_asked(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    url = create(http, 10, meta=metadata(filename="a.csv"), headers={"X-Trace": "t1"})
    head = http.head(url)
    assert head.headers["upload-metadata"] == metadata(filename="a.csv", checked="yes")
    (event,) = [e for e in events(hooked[1]) if e["type"] == "pre-create"]
    assert event["upload"] == {
        "id": None,
        "offset": 0,
        "length": 10,
        "metadata": {"filename": "a.csv"},
        "owner": None,
        "concat": "none",
        "partials": [],
        "storage": None,  # not created yet
    }
    assert event["request"]["method"] == "POST"
    assert event["request"]["uri"].endswith("/files/")
    assert event["request"]["headers"]["x-trace"] == "t1"
    assert event["request"]["remote_address"] == "127.0.0.1"
    assert len(event["id"]) == 32


def test_pre_create_chooses_the_id_and_an_id_in_use_is_refused(http: httpx.Client) -> None:
    chosen = "invoice_2026_0001_abc"
    url = create(http, 3, meta=metadata(filename=f"id:{chosen}"))
    assert upload_id(url) == chosen
    assert patch(http, url, 0, b"abc").status_code == 204
    again = post(http, 3, meta=metadata(filename=f"id:{chosen}"))
    assert_error(again, 500, "ERR_HOOK_FAILED")
    assert http.get(url).content == b"abc"  # the first upload is untouched


@pytest.mark.parametrize("name", ["crash", "nonsense", "slow"])
def test_a_pre_create_hook_that_fails_answers_500_and_creates_nothing(
    hooked: tuple[ServerProcess, Path], http: httpx.Client, name: str
) -> None:
    started = time.monotonic()
    response = post(http, 10, meta=metadata(filename=name))
    assert_error(response, 500, "ERR_HOOK_FAILED")
    assert time.monotonic() - started < 10  # "slow" ends at --hooks-timeout (2 s)
    assert stored_uploads(hooked[0]) == set()
    if name == "crash":  # why is the operator's to read, not the client's
        assert "the hook broke" not in response.text
        assert "raised RuntimeError: the hook broke" in hooked[0].log_path.read_text()


# --- pre-access and owners ---------------------------------------------------------------


def test_pre_access_rejects_an_unknown_token_before_anything_happens(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    response = post(http, 10, headers={"Authorization": "Bearer stolen"})
    assert_error(response, 401, "ERR_BAD_TOKEN")
    assert response.headers["www-authenticate"] == "Bearer"
    assert stored_uploads(hooked[0]) == set()
    assert [e["type"] for e in events(hooked[1])] == ["pre-access"]


def test_an_upload_with_an_owner_exists_only_for_its_owner(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    url = create(http, 6, headers=ALICE)
    assert patch(http, url, 0, b"abc", headers=ALICE).status_code == 204
    for stranger in (BOB, {}):  # another subject, and nobody named
        assert http.head(url, headers=stranger).status_code == 404
        assert_error(patch(http, url, 3, b"def", headers=stranger), 404, "ERR_UPLOAD_NOT_FOUND")
        assert_error(http.get(url, headers=stranger), 404, "ERR_UPLOAD_NOT_FOUND")
        assert_error(http.delete(url, headers=stranger), 404, "ERR_UPLOAD_NOT_FOUND")
        partial_of_alice = http.post(
            "/files/",
            headers={**stranger, "Upload-Concat": f"final;{url}"},
        )
        assert_error(partial_of_alice, 404, "ERR_PARTIAL_NOT_FOUND")
    head = http.head(url, headers=ALICE)
    assert head.status_code == 200 and head.headers["upload-offset"] == "3"
    assert patch(http, url, 3, b"def", headers=ALICE).status_code == 204
    assert http.get(url, headers=ALICE).content == b"abcdef"
    (created,) = [e for e in events(hooked[1]) if e["type"] == "pre-create"]
    assert created["upload"]["owner"] == "alice"
    assert created["request"]["subject"] == "alice"
    assert http.delete(url, headers=ALICE).status_code == 204


def test_an_upload_without_an_owner_is_anyones(http: httpx.Client) -> None:
    url = create(http, 3)
    assert patch(http, url, 0, b"abc", headers=BOB).status_code == 204
    assert http.head(url, headers=ALICE).headers["upload-offset"] == "3"


def test_a_final_upload_may_use_its_callers_own_partials(http: httpx.Client) -> None:
    parts = []
    for data in (b"ab", b"cd"):
        url = create(http, 2, headers={**ALICE, "Upload-Concat": "partial"})
        assert patch(http, url, 0, data, headers=ALICE).status_code == 204
        parts.append(url)
    final = http.post("/files/", headers={**ALICE, "Upload-Concat": "final;" + " ".join(parts)})
    assert final.status_code == 201, final.text
    assert http.get(final.headers["location"], headers=ALICE).content == b"abcd"
    refused = http.post("/files/", headers={**BOB, "Upload-Concat": "final;" + " ".join(parts)})
    assert_error(refused, 404, "ERR_PARTIAL_NOT_FOUND")


# --- pre-terminate -----------------------------------------------------------------------


def test_pre_terminate_rejects_and_the_upload_stays(http: httpx.Client) -> None:
    kept = create(http, 3, meta=metadata(keep="forever"))
    assert patch(http, kept, 0, b"abc").status_code == 204
    assert_error(http.delete(kept), 403, "ERR_KEPT")
    assert http.get(kept).content == b"abc"
    gone = create(http, 3)
    assert http.delete(gone).status_code == 204
    assert http.head(gone).status_code == 410


# --- a webhook -----------------------------------------------------------------------------


@pytest.fixture
def hookd() -> Iterator[Hookd]:
    receiver = Hookd()
    yield receiver
    receiver.close()


def test_a_webhook_decides_with_retries_forwarded_headers_and_a_deadline(
    server_factory: Any, hookd: Hookd
) -> None:
    server = server_factory(
        [
            "--hooks-url", hookd.url,
            "--hooks-enabled", "pre-access,pre-create,pre-terminate",
            "--hooks-forward-headers", "authorization",
            "--hooks-timeout", "2", "--hooks-retries", "2",
        ]
    )  # fmt: skip
    with httpx.Client(base_url=server.base_url, headers=TUS, timeout=30) as http:
        hookd.failures_left = 2  # two 503s, then an answer: within the retries
        url = create(http, 5, headers={"Authorization": "Bearer carol"})
        points = [name for name, _, _ in hookd.calls]
        assert points == ["pre-access", "pre-access", "pre-access", "pre-create"]
        _, headers, event = hookd.calls[-1]
        assert headers["authorization"] == "Bearer carol"  # forwarded as a header
        assert headers["content-type"] == "application/json"
        assert event["type"] == "pre-create" and event["upload"]["owner"] == "carol"
        assert http.head(url).status_code == 404  # carol's upload; this caller is nobody
        assert http.head(url, headers={"Authorization": "Bearer carol"}).status_code == 200

        assert_error(post(http, 13), 413, "ERR_HOOK_REJECTED")
        assert "Unlucky size." in post(http, 13).text

        started = time.monotonic()
        assert_error(post(http, 7), 500, "ERR_HOOK_FAILED")
        assert time.monotonic() - started < 4.5  # the deadline, not the receiver's 5 s

        hookd.failures_left = 10  # more than the retries: the hook failed
        assert_error(post(http, 5), 500, "ERR_HOOK_FAILED")
        hookd.failures_left = 0
        assert http.delete(url, headers={"Authorization": "Bearer carol"}).status_code == 204
        assert hookd.calls[-1][0] == "pre-terminate"
        assert hookd.calls[-1][2]["upload"]["id"] == upload_id(url)


# --- pre-finish ----------------------------------------------------------------------------


@pytest.mark.s3_too
def test_pre_finish_refuses_a_complete_upload_which_then_ends_failed_without_its_bytes(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    server, log = hooked
    url = create(http, 6, meta=metadata(filename="data.bad"))
    assert patch(http, url, 0, b"abc").status_code == 204  # not complete: not asked
    assert [e["type"] for e in events(log)].count("pre-finish") == 0
    response = patch(http, url, 3, b"def")
    assert_error(response, 422, "ERR_CHECK")
    assert "The file did not pass the check." in response.text
    (asked,) = [e for e in events(log) if e["type"] == "pre-finish"]
    assert asked["upload"]["offset"] == asked["upload"]["length"] == 6
    assert http.head(url).status_code == 410
    assert_error(patch(http, url, 6, b""), 410, "ERR_UPLOAD_GONE")
    assert_error(http.get(url), 410, "ERR_UPLOAD_GONE")
    assert stored_uploads(server) == set()  # its bytes are removed
    assert state_rows(server, "SELECT status FROM uploads WHERE id = ?", upload_id(url)) == [
        ("failed",)
    ]


def test_a_pre_finish_hook_that_fails_acknowledges_nothing_of_the_last_chunk(
    http: httpx.Client,
) -> None:
    url = create(http, 6, meta=metadata(filename="finish-crash"))
    assert patch(http, url, 0, b"abc").status_code == 204
    assert_error(patch(http, url, 3, b"def"), 500, "ERR_HOOK_FAILED")
    assert http.head(url).headers["upload-offset"] == "3"


def test_an_upload_complete_at_birth_that_pre_finish_refuses_is_never_created(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    assert_error(post(http, 0, meta=metadata(filename="empty.bad")), 422, "ERR_CHECK")
    assert stored_uploads(hooked[0]) == set()
    assert create(http, 0, meta=metadata(filename="empty.txt"))  # the check passes


# --- metrics ---------------------------------------------------------------------------


def test_hook_calls_are_timed_by_point_and_outcome_in_the_metrics(
    hooked: tuple[ServerProcess, Path], http: httpx.Client
) -> None:
    from tests.integration.test_metrics import scrape

    server = hooked[0]
    assert_error(post(http, 10, meta=metadata(filename="setup.exe")), 422, "ERR_FILE_TYPE")
    assert_error(post(http, 10, meta=metadata(filename="crash")), 500, "ERR_HOOK_FAILED")
    url = create(http, 3, meta=metadata(filename="a.csv"))
    assert patch(http, url, 0, b"abc").status_code == 204

    def counted(hook: str, outcome: str) -> float:
        return scrape(server).value("tusdpy_hook_seconds_count", hook=hook, outcome=outcome)

    assert counted("pre-create", "rejected") == 1
    assert counted("pre-create", "failed") == 1
    assert counted("pre-create", "accepted") == 1
    assert counted("pre-finish", "accepted") == 1
    # the relay's delivery comes after the answer: wait for it
    deadline = time.monotonic() + 10
    while counted("post-finish", "delivered") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted("post-finish", "delivered") == 1
    assert scrape(server).has("tusdpy_events_pending")
