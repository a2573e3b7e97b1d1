"""tus-js-client 4.x (Node.js API, driven through js/upload.mjs) against a real tusd-py server.

Runs on SQLite and PostgreSQL: the crash tests start their own server (server_factory), the
others share one per backend (shared_server). Needs `npm ci` in tests/interop/js; without node
or node_modules the tests skip (fail with TUSD_TEST_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from tests.interop._support import (
    MiB,
    NodeUpload,
    assert_download_matches,
    assert_patches_acknowledged_fully,
    decode_metadata,
    head,
    head_offset,
    requests_of,
    restart,
    run_js_upload,
    stored_js_upload_urls,
    wait_until_assembled,
)

pytestmark = [pytest.mark.node, pytest.mark.timeout(240), pytest.mark.s3_too]

CHUNK = 5 * MiB
# Long enough for the client to outlive a server restart even on a loaded machine (about 55 s
# of retrying in all), with short steps so the client notices the restarted server quickly.
RETRY_THROUGH_RESTART = [0, 250, 250, 250] + [500] * 108


def test_chunked_upload_roundtrip(shared_server: Any, node: str, big_file: Any) -> None:
    server = shared_server
    metadata = {"filename": "random 64MiB.bin", "filetype": "application/octet-stream"}

    result = run_js_upload(
        node,
        {
            "file": str(big_file.path),
            "endpoint": server.files_url,
            "chunkSize": CHUNK,
            "metadata": metadata,
        },
    )

    assert result["status"] == "success"
    url = result["url"]
    assert url.startswith(server.files_url), url
    posts = requests_of(result, "POST")
    assert [p["status"] for p in posts] == [201]
    patches = requests_of(result, "PATCH")
    assert len(patches) == math.ceil(big_file.size / CHUNK), "no PATCH may need a retry"
    assert_patches_acknowledged_fully(result)
    assert patches[-1]["responseOffset"] == big_file.size

    info = head(url)
    assert info.status_code == 200
    assert int(info.headers["Upload-Offset"]) == big_file.size
    assert int(info.headers["Upload-Length"]) == big_file.size
    assert decode_metadata(info.headers["Upload-Metadata"]) == metadata

    assert_download_matches(url, big_file.size, big_file.sha256)


def test_parallel_upload_concatenation(shared_server: Any, node: str, big_file: Any) -> None:
    server = shared_server
    metadata = {"filename": "parallel.bin"}

    result = run_js_upload(
        node,
        {
            "file": str(big_file.path),
            "endpoint": server.files_url,
            "chunkSize": CHUNK,
            "parallelUploads": 3,
            "metadata": metadata,
        },
    )

    assert result["status"] == "success"
    posts = requests_of(result, "POST")
    partial_posts = [p for p in posts if p["uploadConcat"] == "partial"]
    final_posts = [p for p in posts if (p["uploadConcat"] or "").startswith("final;")]
    assert len(partial_posts) == 3 and len(final_posts) == 1, posts
    assert all(p["status"] == 201 for p in posts), posts
    assert_patches_acknowledged_fully(result)
    assert sum(p["bodySize"] for p in requests_of(result, "PATCH")) == big_file.size

    url = result["url"]
    assert url.startswith(server.files_url), url
    info = wait_until_assembled(url, big_file.size)
    assert int(info.headers["Upload-Length"]) == big_file.size
    assert info.headers["Upload-Concat"].startswith("final;"), info.headers
    assert decode_metadata(info.headers["Upload-Metadata"]) == metadata

    assert_download_matches(url, big_file.size, big_file.sha256)


def test_client_rides_out_server_crash(
    server_factory: Any, node: str, big_file: Any, tmp_path: Path
) -> None:
    """The server is SIGKILLed while a PATCH is half sent and started again on the same data
    dir, database and port; the running client retries, resumes where the server says and
    finishes without creating a second upload."""
    server = server_factory()
    upload = NodeUpload(
        node,
        {
            "file": str(big_file.path),
            "endpoint": server.files_url,
            "chunkSize": CHUNK,
            "urlStorage": str(tmp_path / "tus-urls.json"),
            "holdAtOffset": 4 * CHUNK,
            "retryDelays": RETRY_THROUGH_RESTART,
        },
    )
    try:
        hold = upload.wait_event("holding")
        acknowledged = hold["offset"]  # every byte before it was answered with a 204
        assert acknowledged == 4 * CHUNK
        time.sleep(0.3)  # let the server take in the half chunk
        server.kill()
        restart(server)
        result = upload.result()
    finally:
        upload.kill()

    assert result["status"] == "success"
    url = result["url"]
    assert len(requests_of(result, "POST")) == 1, "the client must not start a new upload"
    heads = [h for h in requests_of(result, "HEAD") if h["status"] == 200]
    assert heads, f"the client never resumed with a HEAD: {result['requests']}"
    resumed_at = heads[0]["responseOffset"]
    # The restarted server still knows the acknowledged bytes; it may also have kept part of
    # the interrupted chunk, but never more than was sent.
    assert resumed_at is not None and resumed_at > 0
    assert acknowledged <= resumed_at <= acknowledged + hold["sent"], (resumed_at, hold)
    patches_after = [p for p in requests_of(result, "PATCH") if p["status"] == 204]
    first_after = next(p for p in patches_after if p["uploadOffset"] >= acknowledged)
    assert first_after["uploadOffset"] == resumed_at

    assert head_offset(url) == big_file.size
    assert_download_matches(url, big_file.size, big_file.sha256)


def test_resume_from_url_storage_after_server_and_client_crash(
    server_factory: Any, node: str, big_file: Any, tmp_path: Path
) -> None:
    """Server and client are both SIGKILLed mid-PATCH. After the server restarts on the same
    state, a new client process finds the upload in tus-js-client's FileUrlStorage and resumes
    it from the server's offset (> 0) instead of starting over."""
    server = server_factory()
    url_storage = tmp_path / "tus-urls.json"
    first = NodeUpload(
        node,
        {
            "file": str(big_file.path),
            "endpoint": server.files_url,
            "chunkSize": CHUNK,
            "urlStorage": str(url_storage),
            "holdAtOffset": 3 * CHUNK,
            "retryDelays": None,
        },
    )
    try:
        hold = first.wait_event("holding")
        acknowledged = hold["offset"]
        time.sleep(0.3)
        server.kill()
    finally:
        first.kill()

    stored = stored_js_upload_urls(url_storage)
    assert len(stored) == 1, stored
    url = stored[0]["uploadUrl"]
    assert url.startswith(server.files_url), url

    restart(server)
    before = head(url)
    assert before.status_code == 200, (before.status_code, before.headers, before.text)
    offset_before = int(before.headers["Upload-Offset"])
    assert offset_before > 0, "the restarted server lost the upload's bytes"
    assert acknowledged <= offset_before <= acknowledged + hold["sent"], (offset_before, hold)
    assert int(before.headers["Upload-Length"]) == big_file.size

    result = run_js_upload(
        node,
        {
            "file": str(big_file.path),
            "endpoint": server.files_url,
            "chunkSize": CHUNK,
            "urlStorage": str(url_storage),
            "resume": True,
        },
    )

    assert result["status"] == "success"
    assert result["resumedFrom"] == url
    assert result["url"] == url
    assert requests_of(result, "POST") == [], "resuming must not create a new upload"
    first_request = result["requests"][0]
    assert (first_request["method"], first_request["status"]) == ("HEAD", 200)
    assert first_request["responseOffset"] == offset_before
    assert requests_of(result, "PATCH")[0]["uploadOffset"] == offset_before
    assert_patches_acknowledged_fully(result)

    assert_download_matches(url, big_file.size, big_file.sha256)


def test_stop_and_resume_with_upload_url(shared_server: Any, node: str, medium_file: Any) -> None:
    """creation-with-upload for the first chunk, a client-side abort after 6 MiB, then a new
    client resumes via the `uploadUrl` option."""
    server = shared_server
    chunk = 1 * MiB
    stopped = run_js_upload(
        node,
        {
            "file": str(medium_file.path),
            "endpoint": server.files_url,
            "chunkSize": chunk,
            "uploadDataDuringCreation": True,
            "stopAfter": 6 * MiB,
        },
    )

    assert stopped["status"] == "stopped"
    assert stopped["offset"] == 6 * MiB
    url = stopped["url"]
    (post,) = requests_of(stopped, "POST")
    assert post["status"] == 201
    assert post["responseOffset"] == chunk, "creation-with-upload must store the first chunk"
    assert head_offset(url) == 6 * MiB

    resumed = run_js_upload(
        node,
        {"file": str(medium_file.path), "uploadUrl": url, "chunkSize": chunk},
    )

    assert resumed["status"] == "success"
    assert resumed["url"] == url
    assert requests_of(resumed, "POST") == []
    assert resumed["requests"][0]["method"] == "HEAD"
    assert resumed["requests"][0]["responseOffset"] == 6 * MiB
    assert requests_of(resumed, "PATCH")[0]["uploadOffset"] == 6 * MiB
    assert_patches_acknowledged_fully(resumed)

    assert_download_matches(url, medium_file.size, medium_file.sha256)


def test_parallel_upload_resumes_partials(
    shared_server: Any, node: str, medium_file: Any, tmp_path: Path
) -> None:
    """A parallel upload whose client dies while one partial is half sent; a new client finds
    the partial URLs in its URL storage, resumes them (no new partials) and concatenates."""
    server = shared_server
    url_storage = tmp_path / "tus-urls.json"
    options: dict[str, Any] = {
        "file": str(medium_file.path),
        "endpoint": server.files_url,
        "chunkSize": 2 * MiB,
        "parallelUploads": 3,
        "urlStorage": str(url_storage),
    }
    first = NodeUpload(node, {**options, "holdAtOffset": 4 * MiB})
    try:
        first.wait_event("holding")
        time.sleep(0.3)
    finally:
        first.kill()

    stored = stored_js_upload_urls(url_storage)
    assert len(stored) == 1, stored
    partial_urls = stored[0]["parallelUploadUrls"]
    assert len(partial_urls) == 3
    offsets = [head_offset(u) for u in partial_urls]
    assert sum(offsets) < medium_file.size, "a partial must still be unfinished"

    result = run_js_upload(node, {**options, "resume": True})

    assert result["status"] == "success"
    assert result["resumedFrom"] == partial_urls
    posts = requests_of(result, "POST")
    assert len(posts) == 1 and posts[0]["uploadConcat"].startswith("final;"), posts
    resumed_heads = [h for h in requests_of(result, "HEAD") if h["url"] in partial_urls]
    assert sorted(h["url"] for h in resumed_heads) == sorted(partial_urls)
    assert_patches_acknowledged_fully(result)

    url = result["url"]
    wait_until_assembled(url, medium_file.size)
    assert_download_matches(url, medium_file.size, medium_file.sha256)
