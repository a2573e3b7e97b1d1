"""GET: which bytes to send, with which status and headers (PROTOCOL 24)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol import errors
from tusd_protocol.commands import Download
from tusd_protocol.download import (
    ByteRange,
    DownloadPlan,
    check_downloadable,
    content_headers,
    decide_download,
    entity_tag,
    parse_range,
)
from tusd_protocol.state import ConcatKind, Upload, UploadStatus

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ID = "abcdefghijklmnop0123"
S = UploadStatus


def upload(
    *,
    offset: int = 100,
    length: int | None = 100,
    status: UploadStatus = S.FINISHED,
    kind: ConcatKind = ConcatKind.NONE,
    expires_at: datetime | None = None,
    upload_id: str = ID,
) -> Upload:
    return Upload(upload_id, status, offset, length, concat_kind=kind, expires_at=expires_at)


FINISHED = upload()
ETAG = entity_tag(FINISHED)


def download(
    target: Upload = FINISHED,
    *,
    range: str | None = None,
    if_none_match: str | None = None,
    if_range: str | None = None,
    metadata: dict[str, bytes | None] | None = None,
    ranges: bool = True,
) -> DownloadPlan:
    command = Download(range=range, if_none_match=if_none_match, if_range=if_range)
    return decide_download(target, command, metadata or {}, NOW, ranges=ranges)


def meta(**values: str) -> dict[str, bytes | None]:
    return {k: v.encode() for k, v in values.items()}


# --- check_downloadable ---------------------------------------------------------------


def test_download_needs_a_finished_upload() -> None:
    check_downloadable(FINISHED, NOW)
    with pytest.raises(errors.UploadNotFinished) as info:
        check_downloadable(upload(offset=10, status=S.RECEIVING), NOW)
    assert info.value.status == 409
    with pytest.raises(errors.UploadGone):
        check_downloadable(upload(status=S.TERMINATED), NOW)


def test_an_unassembled_final_upload_is_not_downloadable() -> None:
    final = upload(offset=0, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    with pytest.raises(errors.UploadNotFinished):
        check_downloadable(final, NOW)


def test_a_finished_upload_past_its_deadline_stays_downloadable() -> None:
    check_downloadable(upload(expires_at=NOW - timedelta(days=1)), NOW)


# --- parse_range ----------------------------------------------------------------------


def test_no_range_sends_everything() -> None:
    assert parse_range(None, 100) is None


def test_range_a_b() -> None:
    assert parse_range("bytes=10-19", 100) == ByteRange(10, 19)
    assert ByteRange(10, 19).size == 10


def test_range_a_b_is_clipped_to_the_end() -> None:
    assert parse_range("bytes=90-200", 100) == ByteRange(90, 99)


def test_range_a_dash() -> None:
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)


def test_range_suffix() -> None:
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)


def test_range_suffix_longer_than_the_upload_sends_everything_as_a_range() -> None:
    assert parse_range("bytes=-500", 100) == ByteRange(0, 99)


@pytest.mark.parametrize("value", ["bytes=100-", "bytes=100-200", "bytes=-0", " bytes=150-"])
def test_unsatisfiable_range_is_416(value: str) -> None:
    with pytest.raises(errors.RangeNotSatisfiable) as info:
        parse_range(value, 100)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": "bytes */100"}


def test_any_range_of_an_empty_upload_is_416() -> None:
    for value in ["bytes=0-", "bytes=-1", "bytes=0-0"]:
        with pytest.raises(errors.RangeNotSatisfiable) as info:
            parse_range(value, 0)
        assert info.value.headers == {"Content-Range": "bytes */0"}


@pytest.mark.parametrize(
    "value",
    [
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "items=0-1",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=5-4",
        "bytes=0-" + "9" * 20,
        "0-1",
    ],
)
def test_multiple_or_unknown_ranges_are_ignored(value: str) -> None:
    assert parse_range(value, 100) is None


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=40), length=st.integers(min_value=0, max_value=10**12))
def test_parse_range_raises_only_416(value: str, length: int) -> None:
    try:
        result = parse_range(value, length)
    except errors.RangeNotSatisfiable:
        return
    if result is not None:
        assert 0 <= result.start <= result.end < length


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(min_value=1, max_value=10**6),
    first=st.integers(min_value=0, max_value=2 * 10**6),
    last=st.integers(min_value=0, max_value=2 * 10**6),
)
def test_satisfiable_ranges_lie_inside_the_upload(length: int, first: int, last: int) -> None:
    try:
        result = parse_range(f"bytes={first}-{last}", length)
    except errors.RangeNotSatisfiable:
        assert first >= length
        return
    if last < first:
        assert result is None
    else:
        assert result == ByteRange(first, min(last, length - 1))


# --- content_headers ------------------------------------------------------------------


def test_content_disposition_is_attachment_for_html() -> None:
    headers = content_headers(meta(filetype="text/html", filename="page.html"))
    assert headers["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize("filetype", ["image/svg+xml", "application/pdf", "text/javascript"])
def test_content_disposition_is_attachment_for_unsafe_types(filetype: str) -> None:
    assert content_headers(meta(filetype=filetype))["Content-Disposition"] == "attachment"


def test_content_disposition_is_inline_for_png() -> None:
    headers = content_headers(meta(filetype="image/png", filename="cat.png"))
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == (
        "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
    )


def test_content_type_is_normalised_to_lower_case() -> None:
    headers = content_headers(meta(filetype=" Image/PNG "))
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == "inline"


@pytest.mark.parametrize(
    "filetype", ["", "image", "image/png; charset=x", "text/html\r\nX-Evil: 1", "a/b/c", "ä/ö"]
)
def test_unsafe_or_malformed_filetype_becomes_octet_stream(filetype: str) -> None:
    headers = content_headers(meta(filetype=filetype))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == "attachment"


def test_no_metadata_serves_octet_stream_attachment() -> None:
    assert content_headers({}) == {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": "attachment",
    }


def test_filename_star_encodes_utf8() -> None:
    headers = content_headers(meta(filename="naïve résumé.txt"))
    assert headers["Content-Disposition"] == (
        'attachment; filename="na_ve r_sum_.txt"; '
        "filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt"
    )


def test_filename_quotes_backslashes_and_paths_are_neutralised() -> None:
    headers = content_headers(meta(filename='../dir\\evil"name.txt'))
    disposition = headers["Content-Disposition"]
    assert disposition == (
        "attachment; filename=\"evil_name.txt\"; filename*=UTF-8''evil%22name.txt"
    )


def test_filename_with_control_characters_stays_on_one_line() -> None:
    disposition = content_headers(meta(filename="a\r\nb"))["Content-Disposition"]
    assert "\r" not in disposition and "\n" not in disposition


def test_filename_that_is_not_utf8_is_ignored() -> None:
    headers = content_headers({"filename": b"\xff\xfe"})
    assert headers["Content-Disposition"] == "attachment"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_content_disposition_is_always_a_valid_latin1_header(filename: str) -> None:
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be metadata
        return
    disposition = content_headers({"filename": encoded})["Content-Disposition"]
    assert all(32 <= ord(c) < 127 for c in disposition)


# --- entity_tag -----------------------------------------------------------------------


def test_entity_tag_is_strong_and_names_the_upload() -> None:
    assert entity_tag(FINISHED) == f'"{ID}-100"'
    assert not ETAG.startswith("W/")


def test_entity_tags_of_different_uploads_differ() -> None:
    other = upload(upload_id="ABCDEFGHIJKLMNOP0123")
    assert entity_tag(other) != ETAG
    assert entity_tag(upload(offset=50, length=50)) != ETAG


# --- decide_download ------------------------------------------------------------------


def test_download_sends_everything_with_200() -> None:
    plan = download(metadata=meta(filetype="image/png", filename="cat.png"))
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)
    assert plan.sends_body
    assert plan.headers == {
        "Content-Type": "image/png",
        "Content-Disposition": "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png",
        "ETag": ETAG,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=0, must-revalidate",
        "X-Content-Type-Options": "nosniff",
        "Content-Length": "100",
    }


def test_download_of_an_empty_upload_is_200_with_length_0() -> None:
    plan = download(upload(offset=0, length=0))
    assert (plan.status, plan.start, plan.end) == (200, 0, 0)
    assert plan.headers["Content-Length"] == "0"


def test_download_of_a_range_is_206_with_content_range() -> None:
    plan = download(range="bytes=10-19")
    assert (plan.status, plan.start, plan.end) == (206, 10, 20)
    assert plan.sends_body
    assert plan.headers["Content-Range"] == "bytes 10-19/100"
    assert plan.headers["Content-Length"] == "10"


def test_download_of_a_suffix_range_is_206() -> None:
    plan = download(range="bytes=-5")
    assert (plan.status, plan.start, plan.end) == (206, 95, 100)
    assert plan.headers["Content-Range"] == "bytes 95-99/100"


def test_download_of_a_range_past_the_end_is_clipped() -> None:
    plan = download(range="bytes=90-500")
    assert (plan.start, plan.end) == (90, 100)
    assert plan.headers["Content-Range"] == "bytes 90-99/100"


def test_download_of_an_ignored_range_is_200_without_content_range() -> None:
    plan = download(range="bytes=0-1,5-6")
    assert plan.status == 200
    assert "Content-Range" not in plan.headers


def test_download_of_an_unsatisfiable_range_is_416() -> None:
    with pytest.raises(errors.RangeNotSatisfiable) as info:
        download(range="bytes=100-")
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": "bytes */100"}


def test_download_of_any_range_of_an_empty_upload_is_416() -> None:
    with pytest.raises(errors.RangeNotSatisfiable) as info:
        download(upload(offset=0, length=0), range="bytes=0-")
    assert info.value.headers == {"Content-Range": "bytes */0"}


def test_if_none_match_with_the_current_tag_is_304() -> None:
    plan = download(if_none_match=ETAG)
    assert plan.status == 304
    assert not plan.sends_body
    assert plan.start == plan.end
    assert plan.headers["ETag"] == ETAG
    assert "Content-Length" not in plan.headers


@pytest.mark.parametrize(
    "value", ["*", f'"other", {ETAG}', f"W/{ETAG}", f' "x" ,W/{ETAG} ', f"{ETAG},*"]
)
def test_if_none_match_star_list_or_weak_tag_is_304(value: str) -> None:
    assert download(if_none_match=value).status == 304


@pytest.mark.parametrize("value", ['"other"', '"other", W/"x"', "", ETAG.strip('"')])
def test_if_none_match_with_other_tags_sends_the_bytes(value: str) -> None:
    assert download(if_none_match=value).status == 200


def test_if_none_match_wins_over_range() -> None:
    assert download(if_none_match=ETAG, range="bytes=0-9").status == 304


def test_if_none_match_wins_over_an_unsatisfiable_range() -> None:
    assert download(if_none_match=ETAG, range="bytes=500-").status == 304


def test_if_range_with_the_current_tag_sends_the_range() -> None:
    plan = download(range="bytes=10-19", if_range=ETAG)
    assert plan.status == 206
    assert plan.headers["Content-Range"] == "bytes 10-19/100"


@pytest.mark.parametrize("value", ['"other"', f"W/{ETAG}", "Wed, 01 May 2024 12:00:00 GMT"])
def test_if_range_mismatch_sends_everything_with_200(value: str) -> None:
    """A weak tag or a date never matches If-Range (strong comparison, RFC 9110 13.1.5)."""
    plan = download(range="bytes=10-19", if_range=value)
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)
    assert "Content-Range" not in plan.headers
    assert plan.headers["Content-Length"] == "100"


def test_if_range_mismatch_ignores_an_unsatisfiable_range() -> None:
    """RFC 9110 13.2.2 step 5: a false If-Range means the Range is ignored: 200, not 416."""
    plan = download(range="bytes=500-", if_range='"other"')
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)


def test_if_range_without_range_sends_everything() -> None:
    assert download(if_range=ETAG).status == 200


def test_without_range_reads_range_is_ignored() -> None:
    plan = download(range="bytes=10-19", ranges=False)
    assert (plan.status, plan.start, plan.end) == (200, 0, 100)
    assert plan.headers["Accept-Ranges"] == "none"
    assert "Content-Range" not in plan.headers


def test_without_range_reads_an_unsatisfiable_range_is_200() -> None:
    plan = download(range="bytes=500-", ranges=False)
    assert plan.status == 200
    assert plan.headers["Accept-Ranges"] == "none"


def test_without_range_reads_if_none_match_is_still_304() -> None:
    plan = download(if_none_match=ETAG, ranges=False)
    assert plan.status == 304
    assert plan.headers["Accept-Ranges"] == "none"


def test_download_of_an_unfinished_upload_is_409() -> None:
    with pytest.raises(errors.UploadNotFinished) as info:
        download(upload(offset=10, status=S.RECEIVING))
    assert info.value.status == 409


def test_download_of_an_unfinished_upload_is_409_even_when_the_tag_matches() -> None:
    unfinished = upload(offset=10, status=S.RECEIVING)
    with pytest.raises(errors.UploadNotFinished):
        download(unfinished, if_none_match="*")


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_download_of_a_gone_upload_is_410(status: UploadStatus) -> None:
    with pytest.raises(errors.UploadGone) as info:
        download(upload(status=status))
    assert info.value.status == 410


def test_download_of_an_expired_receiving_upload_is_410() -> None:
    expired = upload(offset=10, status=S.RECEIVING, expires_at=NOW)
    with pytest.raises(errors.UploadGone):
        download(expired)


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=10**9),
    value=st.none() | st.text(max_size=30) | st.from_regex(r"bytes=[0-9]{0,4}-[0-9]{0,4}"),
    ranges=st.booleans(),
)
def test_download_plans_lie_inside_the_upload(length: int, value: str | None, ranges: bool) -> None:
    target = upload(offset=length, length=length)
    try:
        plan = download(target, range=value, ranges=ranges)
    except errors.RangeNotSatisfiable:
        assert ranges
        return
    assert 0 <= plan.start <= plan.end <= length
    assert plan.headers["Content-Length"] == str(plan.end - plan.start)
    assert (plan.status == 206) == ("Content-Range" in plan.headers)
    if plan.status == 200:
        assert (plan.start, plan.end) == (0, length)
