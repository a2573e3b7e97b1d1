"""Every decision a tus request needs, one behaviour per test, without a server."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol import errors
from tusd_protocol.decisions import (
    EXTENSIONS,
    MAX_METADATA_HEADER,
    TUS_VERSION,
    AppendPlan,
    ByteRange,
    Limits,
    body_overrun,
    check_downloadable,
    check_tus_resumable,
    conclude_append,
    content_headers,
    decide_append,
    decide_creation,
    decide_final_length,
    effective_method,
    expiry_headers,
    final_ready,
    has_body,
    head_headers,
    initial_status,
    is_valid_upload_id,
    next_expiry,
    options_headers,
    parse_range,
    partial_id_from_url,
)
from tusd_protocol.headers import ChecksumHeader, format_http_date
from tusd_protocol.state import ConcatKind, Upload, UploadStatus

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ID = "abcdefghijklmnop0123"
NO_LIMITS = Limits()
OCTETS = "application/offset+octet-stream"
S = UploadStatus


def upload(
    *,
    offset: int = 0,
    length: int | None = 100,
    status: UploadStatus = S.RECEIVING,
    kind: ConcatKind = ConcatKind.NONE,
    expires_at: datetime | None = None,
    metadata_header: str | None = None,
    concat_header: str | None = None,
    upload_id: str = ID,
) -> Upload:
    return Upload(
        upload_id,
        status,
        offset,
        length,
        metadata_header=metadata_header,
        concat_kind=kind,
        concat_header=concat_header,
        expires_at=expires_at,
    )


def patch_headers(offset: int = 0, **extra: str) -> dict[str, str]:
    headers = {"tus-resumable": "1.0.0", "content-type": OCTETS, "upload-offset": str(offset)}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha1_header(data: bytes) -> str:
    return "sha1 " + b64(hashlib.sha1(data).digest())


# --- check_tus_resumable --------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE", "GET"])
def test_missing_tus_resumable_is_412_with_tus_version(method: str) -> None:
    with pytest.raises(errors.UnsupportedVersion) as info:
        check_tus_resumable(method, {})
    assert info.value.status == 412
    assert info.value.headers == {"Tus-Version": "1.0.0"}


@pytest.mark.parametrize("value", ["0.2.2", "1.0", "1.0.0 ", "", "2.0.0"])
def test_unsupported_tus_resumable_is_412(value: str) -> None:
    with pytest.raises(errors.UnsupportedVersion):
        check_tus_resumable("PATCH", {"tus-resumable": value})


def test_tus_resumable_1_0_0_is_accepted() -> None:
    check_tus_resumable("POST", {"tus-resumable": TUS_VERSION})


@pytest.mark.parametrize("headers", [{}, {"tus-resumable": "0.0.1"}])
def test_options_never_requires_tus_resumable(headers: dict[str, str]) -> None:
    check_tus_resumable("OPTIONS", headers)


# --- effective_method -----------------------------------------------------------------


@pytest.mark.parametrize("override", ["PATCH", "DELETE", "HEAD", "patch", " Delete "])
def test_method_override_on_post_replaces_the_method(override: str) -> None:
    assert effective_method("POST", {"x-http-method-override": override}) == (
        override.strip().upper()
    )


def test_post_without_override_stays_post() -> None:
    assert effective_method("POST", {}) == "POST"


def test_method_override_is_ignored_on_other_methods() -> None:
    assert effective_method("GET", {"x-http-method-override": "DELETE"}) == "GET"
    assert effective_method("PATCH", {"x-http-method-override": "DELETE"}) == "PATCH"


@pytest.mark.parametrize("override", ["TRACE", "CONNECT", "", "PUT"])
def test_method_override_to_other_methods_is_400(override: str) -> None:
    with pytest.raises(errors.MethodOverrideNotAllowed) as info:
        effective_method("POST", {"x-http-method-override": override})
    assert info.value.status == 400


# --- decide_creation ------------------------------------------------------------------


def test_creation_with_length() -> None:
    plan = decide_creation({"upload-length": "100"}, NO_LIMITS)
    assert plan.length == 100
    assert plan.concat_kind is ConcatKind.NONE
    assert plan.initial_append is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_with_deferred_length() -> None:
    plan = decide_creation({"upload-defer-length": "1"}, NO_LIMITS)
    assert plan.length is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_of_length_zero_is_finished_at_once() -> None:
    plan = decide_creation({"upload-length": "0"}, NO_LIMITS)
    assert plan.length == 0
    assert initial_status(plan) is S.FINISHED


def test_creation_with_length_and_defer_length_is_400() -> None:
    with pytest.raises(errors.LengthConflict) as info:
        decide_creation({"upload-length": "100", "upload-defer-length": "1"}, NO_LIMITS)
    assert info.value.status == 400


def test_creation_without_length_is_400() -> None:
    with pytest.raises(errors.LengthRequired) as info:
        decide_creation({}, NO_LIMITS)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["0", "2", "true", " 1", ""])
def test_creation_with_defer_length_other_than_1_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidDeferLength) as info:
        decide_creation({"upload-defer-length": value}, NO_LIMITS)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["-1", "+1", "1.5", "", "abc", str(2**63)])
def test_creation_with_malformed_length_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidLength) as info:
        decide_creation({"upload-length": value}, NO_LIMITS)
    assert info.value.status == 400


def test_creation_over_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation({"upload-length": "1001"}, Limits(max_size=1000))
    assert info.value.status == 413


def test_creation_at_max_size_is_accepted() -> None:
    assert decide_creation({"upload-length": "1000"}, Limits(max_size=1000)).length == 1000


def test_creation_keeps_the_metadata_header_byte_for_byte() -> None:
    header = "filename d29ybGQ=,  flag"  # spacing the parser tolerates is kept as sent
    plan = decide_creation({"upload-length": "1", "upload-metadata": header}, NO_LIMITS)
    assert plan.metadata_header == header
    assert plan.metadata == {"filename": b"world", "flag": None}


def test_creation_with_invalid_metadata_is_400() -> None:
    with pytest.raises(errors.InvalidMetadata) as info:
        decide_creation({"upload-length": "1", "upload-metadata": "a YQ==,a YQ=="}, NO_LIMITS)
    assert info.value.status == 400


def test_creation_with_huge_metadata_is_431() -> None:
    header = "k " + "A" * MAX_METADATA_HEADER
    with pytest.raises(errors.HeaderTooLarge) as info:
        decide_creation({"upload-length": "1", "upload-metadata": header}, NO_LIMITS)
    assert info.value.status == 431


def test_creation_of_a_partial_upload() -> None:
    plan = decide_creation({"upload-length": "5", "upload-concat": "partial"}, NO_LIMITS)
    assert plan.concat_kind is ConcatKind.PARTIAL
    assert plan.concat_header == "partial"
    assert plan.length == 5


def test_creation_of_a_final_upload_lists_partials_in_order() -> None:
    header = "final;/files/b /files/a /files/b"
    plan = decide_creation({"upload-concat": header}, NO_LIMITS)
    assert plan.concat_kind is ConcatKind.FINAL
    assert plan.partial_urls == ("/files/b", "/files/a", "/files/b")
    assert plan.concat_header == header
    assert plan.length is None
    assert initial_status(plan) is S.CONCATENATING


@pytest.mark.parametrize("extra", [{"upload-length": "5"}, {"upload-defer-length": "1"}])
def test_final_upload_with_a_length_is_400(extra: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidPartial) as info:
        decide_creation({"upload-concat": "final;/files/a", **extra}, NO_LIMITS)
    assert info.value.status == 400


def test_final_upload_with_a_body_is_400() -> None:
    headers = {"upload-concat": "final;/files/a", "content-length": "3", "content-type": OCTETS}
    with pytest.raises(errors.ProtocolError) as info:
        decide_creation(headers, NO_LIMITS)
    assert info.value.status == 400


def test_creation_with_garbage_concat_is_400() -> None:
    with pytest.raises(errors.InvalidConcat):
        decide_creation({"upload-length": "1", "upload-concat": "final"}, NO_LIMITS)


def test_creation_with_upload_plans_an_append_at_0() -> None:
    headers = {
        "upload-length": "10",
        "content-length": "4",
        "content-type": OCTETS,
        "upload-checksum": sha1_header(b"abcd"),
    }
    plan = decide_creation(headers, NO_LIMITS)
    assert plan.initial_append == AppendPlan(
        0, 10, 4, None, ChecksumHeader("sha1", hashlib.sha1(b"abcd").digest())
    )


def test_creation_with_chunked_body_plans_an_append() -> None:
    headers = {"upload-length": "10", "transfer-encoding": "chunked", "content-type": OCTETS}
    plan = decide_creation(headers, NO_LIMITS)
    assert plan.initial_append is not None
    assert plan.initial_append.body_length is None
    assert plan.initial_append.max_bytes == 10


def test_creation_with_empty_body_plans_no_append() -> None:
    plan = decide_creation({"upload-length": "10", "content-length": "0"}, NO_LIMITS)
    assert plan.initial_append is None


def test_creation_with_upload_needs_offset_content_type_415() -> None:
    headers = {"upload-length": "10", "content-length": "4", "content-type": "text/plain"}
    with pytest.raises(errors.UnsupportedMediaType) as info:
        decide_creation(headers, NO_LIMITS)
    assert info.value.status == 415


def test_creation_with_body_past_length_is_413() -> None:
    headers = {"upload-length": "3", "content-length": "4", "content-type": OCTETS}
    with pytest.raises(errors.BodyExceedsLength) as info:
        decide_creation(headers, NO_LIMITS)
    assert info.value.status == 413


def test_deferred_creation_with_body_past_max_size_is_413() -> None:
    headers = {"upload-defer-length": "1", "content-length": "11", "content-type": OCTETS}
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation(headers, Limits(max_size=10))
    assert info.value.status == 413


def test_creation_with_upload_and_unknown_checksum_is_400() -> None:
    headers = {
        "upload-length": "3",
        "content-length": "3",
        "content-type": OCTETS,
        "upload-checksum": "whirlpool YWJj",
    }
    with pytest.raises(errors.UnsupportedChecksumAlgorithm) as info:
        decide_creation(headers, NO_LIMITS)
    assert info.value.status == 400


def test_creation_with_malformed_content_length_is_400() -> None:
    with pytest.raises(errors.InvalidLength):
        decide_creation({"upload-length": "3", "content-length": "-1"}, NO_LIMITS)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "upload-length",
                "upload-defer-length",
                "upload-metadata",
                "upload-concat",
                "content-length",
                "content-type",
                "transfer-encoding",
                "upload-checksum",
            ]
        ),
        st.text(max_size=30) | st.sampled_from(["1", "0", "partial", "final;/f/a", OCTETS]),
    )
)
def test_creation_raises_only_protocol_errors(headers: dict[str, str]) -> None:
    try:
        decide_creation(headers, Limits(max_size=100))
    except errors.ProtocolError:
        pass


def test_has_body() -> None:
    assert has_body({"content-length": "1"})
    assert not has_body({"content-length": "0"})
    assert has_body({"transfer-encoding": "Chunked"})
    assert not has_body({})


# --- decide_append --------------------------------------------------------------------


def test_append_at_the_current_offset() -> None:
    plan = decide_append(upload(offset=10), patch_headers(10, content_length="5"), NO_LIMITS, NOW)
    assert plan == AppendPlan(offset=10, max_bytes=90, body_length=5)


def test_append_without_content_length_is_bounded_by_the_length() -> None:
    plan = decide_append(upload(offset=10), patch_headers(10), NO_LIMITS, NOW)
    assert plan.max_bytes == 90
    assert plan.body_length is None


def test_append_to_deferred_upload_without_limit_is_unbounded() -> None:
    plan = decide_append(upload(length=None), patch_headers(0), NO_LIMITS, NOW)
    assert plan.max_bytes is None


def test_append_to_deferred_upload_is_bounded_by_max_size() -> None:
    plan = decide_append(upload(offset=4, length=None), patch_headers(4), Limits(max_size=10), NOW)
    assert plan.max_bytes == 6


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream", ""])
def test_append_needs_offset_octet_stream_415(content_type: str | None) -> None:
    headers = patch_headers(0)
    if content_type is None:
        del headers["content-type"]
    else:
        headers["content-type"] = content_type
    with pytest.raises(errors.UnsupportedMediaType) as info:
        decide_append(upload(), headers, NO_LIMITS, NOW)
    assert info.value.status == 415


def test_append_content_type_parameters_and_case_are_accepted() -> None:
    headers = patch_headers(0, content_type="Application/Offset+Octet-Stream; charset=binary")
    decide_append(upload(), headers, NO_LIMITS, NOW)


def test_append_without_upload_offset_is_400() -> None:
    headers = patch_headers(0)
    del headers["upload-offset"]
    with pytest.raises(errors.InvalidOffset) as info:
        decide_append(upload(), headers, NO_LIMITS, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["-1", "+0", " 0", "0 ", "", "zero", "0x0", str(2**63)])
def test_append_with_malformed_upload_offset_is_400(value: str) -> None:
    headers = patch_headers(0)
    headers["upload-offset"] = value
    with pytest.raises(errors.InvalidOffset) as info:
        decide_append(upload(), headers, NO_LIMITS, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize("sent", [0, 5, 11, 100])
def test_append_at_another_offset_is_409_with_the_current_offset(sent: int) -> None:
    with pytest.raises(errors.OffsetMismatch) as info:
        decide_append(upload(offset=10), patch_headers(sent), NO_LIMITS, NOW)
    assert info.value.status == 409
    assert info.value.code == "ERR_OFFSET_MISMATCH"
    assert info.value.headers == {"Upload-Offset": "10"}


def test_append_with_content_length_past_the_length_is_413() -> None:
    headers = patch_headers(90, content_length="11")
    with pytest.raises(errors.BodyExceedsLength) as info:
        decide_append(upload(offset=90), headers, NO_LIMITS, NOW)
    assert info.value.status == 413
    assert info.value.code == "ERR_BODY_EXCEEDS_LENGTH"


def test_append_with_content_length_up_to_the_length_is_accepted() -> None:
    plan = decide_append(upload(offset=90), patch_headers(90, content_length="10"), NO_LIMITS, NOW)
    assert plan.max_bytes == 10


def test_append_past_max_size_of_a_deferred_upload_is_413() -> None:
    headers = patch_headers(0, content_length="11")
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_append(upload(length=None), headers, Limits(max_size=10), NOW)
    assert info.value.status == 413


def test_append_to_a_final_upload_is_403() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    with pytest.raises(errors.FinalUploadNotPatchable) as info:
        decide_append(final, patch_headers(0), NO_LIMITS, NOW)
    assert info.value.status == 403


def test_append_to_a_finished_final_upload_is_403() -> None:
    final = upload(offset=100, status=S.FINISHED, kind=ConcatKind.FINAL)
    with pytest.raises(errors.FinalUploadNotPatchable):
        decide_append(final, patch_headers(100), NO_LIMITS, NOW)


def test_append_to_a_partial_upload_is_allowed() -> None:
    decide_append(upload(kind=ConcatKind.PARTIAL), patch_headers(0), NO_LIMITS, NOW)


def test_append_to_an_expired_upload_is_410() -> None:
    with pytest.raises(errors.UploadGone) as info:
        decide_append(upload(expires_at=NOW), patch_headers(0), NO_LIMITS, NOW)
    assert info.value.status == 410


def test_append_before_expiry_is_allowed() -> None:
    decide_append(upload(expires_at=LATER), patch_headers(0), NO_LIMITS, NOW)


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_append_to_a_gone_upload_is_410(status: UploadStatus) -> None:
    with pytest.raises(errors.UploadGone) as info:
        decide_append(upload(status=status), patch_headers(0), NO_LIMITS, NOW)
    assert info.value.status == 410


def test_append_with_checksum_carries_it_in_the_plan() -> None:
    headers = patch_headers(0, upload_checksum=sha1_header(b"abc"))
    plan = decide_append(upload(), headers, NO_LIMITS, NOW)
    assert plan.checksum == ChecksumHeader("sha1", hashlib.sha1(b"abc").digest())


def test_append_with_unknown_checksum_algorithm_is_400() -> None:
    headers = patch_headers(0, upload_checksum="sha3 " + b64(bytes(32)))
    with pytest.raises(errors.UnsupportedChecksumAlgorithm) as info:
        decide_append(upload(), headers, NO_LIMITS, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("algorithm", "size"), [("sha1", 19), ("sha1", 21), ("md5", 20), ("crc32", 8), ("xxh128", 8)]
)
def test_append_with_wrong_digest_length_is_400(algorithm: str, size: int) -> None:
    headers = patch_headers(0, upload_checksum=f"{algorithm} {b64(bytes(size))}")
    with pytest.raises(errors.InvalidChecksum) as info:
        decide_append(upload(), headers, NO_LIMITS, NOW)
    assert type(info.value) is errors.InvalidChecksum
    assert info.value.status == 400


def test_append_with_malformed_checksum_is_400() -> None:
    headers = patch_headers(0, upload_checksum="sha1")
    with pytest.raises(errors.InvalidChecksum):
        decide_append(upload(), headers, NO_LIMITS, NOW)


# --- deferred length ------------------------------------------------------------------


def test_deferred_length_is_declared_on_append() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, patch_headers(10, upload_length="50"), NO_LIMITS, NOW)
    assert plan.declare_length == 50
    assert plan.max_bytes == 40
    outcome = conclude_append(deferred, plan, 40, True, None)
    assert outcome.new_length == 50
    assert outcome.new_offset == 50
    assert outcome.new_status is S.FINISHED


def test_deferred_length_declared_once_may_be_repeated_with_the_same_value() -> None:
    known = upload(offset=10, length=50)
    plan = decide_append(known, patch_headers(10, upload_length="50"), NO_LIMITS, NOW)
    assert plan.declare_length is None
    assert conclude_append(known, plan, 5, True, None).new_length == 50


def test_deferred_length_with_a_different_second_value_is_400() -> None:
    known = upload(offset=10, length=50)
    with pytest.raises(errors.LengthAlreadySet) as info:
        decide_append(known, patch_headers(10, upload_length="60"), NO_LIMITS, NOW)
    assert info.value.status == 400


def test_declared_length_below_the_offset_is_400() -> None:
    deferred = upload(offset=10, length=None)
    with pytest.raises(errors.LengthTooSmall) as info:
        decide_append(deferred, patch_headers(10, upload_length="9"), NO_LIMITS, NOW)
    assert info.value.status == 400


def test_declared_length_over_max_size_is_413() -> None:
    deferred = upload(length=None)
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_append(deferred, patch_headers(0, upload_length="11"), Limits(max_size=10), NOW)
    assert info.value.status == 413


def test_declared_length_bounds_the_body() -> None:
    deferred = upload(length=None)
    headers = patch_headers(0, upload_length="5", content_length="6")
    with pytest.raises(errors.BodyExceedsLength):
        decide_append(deferred, headers, NO_LIMITS, NOW)


def test_malformed_declared_length_is_400() -> None:
    with pytest.raises(errors.InvalidLength):
        decide_append(upload(length=None), patch_headers(0, upload_length="-5"), NO_LIMITS, NOW)


def test_declaring_the_current_offset_as_length_finishes_on_an_empty_patch() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, patch_headers(10, upload_length="10"), NO_LIMITS, NOW)
    outcome = conclude_append(deferred, plan, 0, True, None)
    assert outcome.new_status is S.FINISHED
    assert outcome.new_length == 10


# --- conclude_append ------------------------------------------------------------------


def test_conclude_keeps_every_received_byte() -> None:
    outcome = conclude_append(upload(offset=10), AppendPlan(10, 90, 20), 20, True, None)
    assert (outcome.new_offset, outcome.kept, outcome.new_status) == (30, 20, S.RECEIVING)
    assert outcome.new_length == 100


def test_conclude_of_an_interrupted_patch_keeps_what_arrived() -> None:
    outcome = conclude_append(upload(offset=10), AppendPlan(10, 90, 50), 7, False, None)
    assert outcome.new_offset == 17
    assert outcome.kept == 7


def test_conclude_finishes_at_the_length() -> None:
    outcome = conclude_append(upload(offset=90), AppendPlan(90, 10, 10), 10, True, None)
    assert outcome.new_status is S.FINISHED
    assert outcome.new_offset == 100


def test_conclude_of_a_deferred_upload_stays_receiving() -> None:
    deferred = upload(length=None)
    outcome = conclude_append(deferred, AppendPlan(0, None, None), 1000, True, None)
    assert outcome.new_status is S.RECEIVING
    assert outcome.new_length is None


def test_conclude_with_matching_checksum_keeps_the_chunk() -> None:
    digest = hashlib.sha1(b"abc").digest()
    plan = AppendPlan(10, 90, 3, None, ChecksumHeader("sha1", digest))
    outcome = conclude_append(upload(offset=10), plan, 3, True, digest)
    assert outcome.new_offset == 13
    assert outcome.kept == 3


def test_conclude_with_checksum_mismatch_is_460_and_keeps_the_offset() -> None:
    plan = AppendPlan(10, 90, 3, None, ChecksumHeader("sha1", hashlib.sha1(b"abc").digest()))
    with pytest.raises(errors.ChecksumMismatch) as info:
        conclude_append(upload(offset=10), plan, 3, True, hashlib.sha1(b"abd").digest())
    assert info.value.status == 460
    assert info.value.code == "ERR_CHECKSUM_MISMATCH"
    assert info.value.headers == {"Upload-Offset": "10"}


def test_conclude_of_an_interrupted_checksummed_chunk_keeps_nothing() -> None:
    plan = AppendPlan(10, 90, 50, None, ChecksumHeader("sha1", bytes(20)))
    outcome = conclude_append(upload(offset=10), plan, 30, False, hashlib.sha1(b"x").digest())
    assert outcome.kept == 0
    assert outcome.new_offset == 10
    assert outcome.new_status is S.RECEIVING


def test_conclude_past_the_declared_length_is_a_server_fault() -> None:
    deferred = upload(length=None)
    with pytest.raises(errors.ServerFault) as info:
        conclude_append(deferred, AppendPlan(0, 5, None, 5), 6, True, None)
    assert info.value.status == 500


def test_body_overrun_names_the_length_or_the_limit() -> None:
    plan = AppendPlan(0, 10, None)
    assert isinstance(body_overrun(plan, 10, NO_LIMITS), errors.BodyExceedsLength)
    declared = AppendPlan(0, 10, None, declare_length=10)
    assert isinstance(body_overrun(declared, None, NO_LIMITS), errors.BodyExceedsLength)
    over_limit = body_overrun(AppendPlan(0, 10, None), None, Limits(max_size=10))
    assert type(over_limit) is errors.EntityTooLarge
    assert over_limit.status == 413


# --- HEAD -----------------------------------------------------------------------------


def test_head_reports_offset_and_length() -> None:
    headers = head_headers(upload(offset=10), NOW)
    assert headers == {"Cache-Control": "no-store", "Upload-Offset": "10", "Upload-Length": "100"}


def test_head_reports_offset_0() -> None:
    assert head_headers(upload(offset=0), NOW)["Upload-Offset"] == "0"


def test_head_reports_offset_of_a_finished_upload() -> None:
    headers = head_headers(upload(offset=100, status=S.FINISHED), NOW)
    assert headers["Upload-Offset"] == "100"
    assert "Upload-Expires" not in headers


def test_head_of_a_deferred_upload_sends_defer_length_1() -> None:
    headers = head_headers(upload(length=None), NOW)
    assert headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in headers


def test_head_echoes_metadata_and_concat_exactly() -> None:
    headers = head_headers(
        upload(metadata_header="a YQ==,flag", concat_header="partial", kind=ConcatKind.PARTIAL),
        NOW,
    )
    assert headers["Upload-Metadata"] == "a YQ==,flag"
    assert headers["Upload-Concat"] == "partial"


def test_head_of_an_unassembled_final_upload_omits_the_offset() -> None:
    final = upload(
        length=30, status=S.CONCATENATING, kind=ConcatKind.FINAL, concat_header="final;/f/a"
    )
    headers = head_headers(final, NOW)
    assert "Upload-Offset" not in headers
    assert headers["Upload-Length"] == "30"
    assert headers["Upload-Concat"] == "final;/f/a"


def test_head_of_a_final_upload_with_unknown_length_sends_no_defer_length() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    headers = head_headers(final, NOW)
    assert "Upload-Offset" not in headers
    assert "Upload-Defer-Length" not in headers


def test_head_of_an_assembled_final_upload_has_offset_equal_length() -> None:
    final = upload(offset=30, length=30, status=S.FINISHED, kind=ConcatKind.FINAL)
    headers = head_headers(final, NOW)
    assert headers["Upload-Offset"] == headers["Upload-Length"] == "30"


def test_head_sends_upload_expires_while_the_upload_can_expire() -> None:
    headers = head_headers(upload(expires_at=LATER), NOW)
    assert headers["Upload-Expires"] == format_http_date(LATER)


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_head_of_a_gone_upload_is_410(status: UploadStatus) -> None:
    with pytest.raises(errors.UploadGone) as info:
        head_headers(upload(status=status), NOW)
    assert info.value.status == 410


def test_head_of_an_expired_upload_is_410() -> None:
    with pytest.raises(errors.UploadGone):
        head_headers(upload(expires_at=NOW - timedelta(seconds=1)), NOW)


def test_a_finished_upload_past_its_deadline_does_not_expire() -> None:
    finished = upload(offset=100, status=S.FINISHED, expires_at=NOW - timedelta(days=1))
    assert head_headers(finished, NOW)["Upload-Offset"] == "100"
    assert expiry_headers(finished) == {}


# --- expiry ---------------------------------------------------------------------------


def test_next_expiry_moves_with_activity() -> None:
    limits = Limits(expiration=timedelta(hours=2))
    assert next_expiry(limits, NOW, S.RECEIVING) == NOW + timedelta(hours=2)
    assert next_expiry(limits, NOW, S.CONCATENATING) == NOW + timedelta(hours=2)


def test_next_expiry_is_none_for_finished_or_without_expiration() -> None:
    assert next_expiry(Limits(expiration=timedelta(hours=2)), NOW, S.FINISHED) is None
    assert next_expiry(NO_LIMITS, NOW, S.RECEIVING) is None


# --- OPTIONS --------------------------------------------------------------------------


def test_options_headers() -> None:
    headers = options_headers(Limits(max_size=1000), ("sha1", "md5"))
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Extension"] == ",".join(EXTENSIONS)
    assert headers["Tus-Checksum-Algorithm"] == "sha1,md5"
    assert headers["Tus-Max-Size"] == "1000"
    assert "Tus-Max-Size" not in options_headers(NO_LIMITS, ("sha1",))


# --- concatenation --------------------------------------------------------------------

OWN = frozenset({"tus.example.org", "localhost:1080"})


def test_partial_from_a_relative_url() -> None:
    assert partial_id_from_url(f"/files/{ID}", "/files/", OWN) == ID


def test_partial_from_an_absolute_url_of_this_server() -> None:
    assert partial_id_from_url(f"https://tus.example.org/files/{ID}", "/files/", OWN) == ID
    assert partial_id_from_url(f"http://LOCALHOST:1080/files/{ID}", "/files/", OWN) == ID


def test_partial_url_query_and_fragment_are_ignored() -> None:
    assert partial_id_from_url(f"/files/{ID}?x=1", "/files/", OWN) == ID
    assert partial_id_from_url(f"/files/{ID}#frag", "/files/", OWN) == ID


@pytest.mark.parametrize(
    "url",
    [
        f"https://evil.example.com/files/{ID}",
        f"ftp://tus.example.org/files/{ID}",
        f"https://tus.example.org:8443/files/{ID}",
        f"/other/{ID}",
        "/files/",
        "/files/short",
        f"/files/{ID}/extra",
        f"/files/{ID}.bin",
        "/files/../../etc/passwd",
        f"files/{ID}",
        f"//evil.example.com/files/{ID}",
        f"https://tus.example.org@evil.example.com/files/{ID}",
    ],
)
def test_partial_url_not_of_this_server_is_400(url: str) -> None:
    with pytest.raises(errors.InvalidPartial) as info:
        partial_id_from_url(url, "/files/", OWN)
    assert info.value.status == 400


def test_upload_id_grammar() -> None:
    assert is_valid_upload_id("A" * 16)
    assert is_valid_upload_id("a-b_c" * 12 + "abcd")
    assert not is_valid_upload_id("A" * 15)
    assert not is_valid_upload_id("A" * 65)
    assert not is_valid_upload_id("A" * 15 + "/")
    assert not is_valid_upload_id("")


def partial(length: int | None, status: UploadStatus = S.FINISHED, **kw: object) -> Upload:
    return upload(
        offset=length or 0,
        length=length,
        status=status,
        kind=ConcatKind.PARTIAL,
        **kw,  # type: ignore[arg-type]
    )


def test_final_length_is_the_sum_of_the_partials() -> None:
    assert decide_final_length([partial(3), partial(4), partial(3)], NO_LIMITS, NOW) == 10


def test_final_length_is_unknown_while_a_partial_is_deferred() -> None:
    parts = [partial(3), partial(None, S.RECEIVING)]
    assert decide_final_length(parts, NO_LIMITS, NOW) is None


def test_final_length_of_unfinished_partials_with_known_lengths() -> None:
    parts = [partial(3, S.RECEIVING), partial(4)]
    assert decide_final_length(parts, NO_LIMITS, NOW) == 7
    assert not final_ready(parts)
    assert final_ready([partial(3), partial(4)])


def test_final_over_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_final_length([partial(6), partial(5)], Limits(max_size=10), NOW)
    assert info.value.status == 413


def test_final_of_a_non_partial_upload_is_400() -> None:
    plain = upload(offset=3, length=3, status=S.FINISHED)
    with pytest.raises(errors.InvalidPartial) as info:
        decide_final_length([partial(3), plain], NO_LIMITS, NOW)
    assert info.value.status == 400


def test_final_of_a_final_upload_is_400() -> None:
    final = upload(offset=3, length=3, status=S.FINISHED, kind=ConcatKind.FINAL)
    with pytest.raises(errors.InvalidPartial):
        decide_final_length([final], NO_LIMITS, NOW)


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_final_of_a_gone_partial_is_400(status: UploadStatus) -> None:
    with pytest.raises(errors.InvalidPartial):
        decide_final_length([partial(3, status)], NO_LIMITS, NOW)


def test_final_of_an_expired_partial_is_400() -> None:
    expired = partial(3, S.RECEIVING, expires_at=NOW)
    with pytest.raises(errors.InvalidPartial):
        decide_final_length([expired], NO_LIMITS, NOW)


# --- GET ------------------------------------------------------------------------------


def test_download_needs_a_finished_upload() -> None:
    check_downloadable(upload(offset=100, status=S.FINISHED), NOW)
    with pytest.raises(errors.UploadNotFinished) as info:
        check_downloadable(upload(offset=10), NOW)
    assert info.value.status == 409
    with pytest.raises(errors.UploadGone):
        check_downloadable(upload(status=S.TERMINATED), NOW)


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
        with pytest.raises(errors.RangeNotSatisfiable):
            parse_range(value, 0)


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


def meta(**values: str) -> dict[str, bytes | None]:
    return {k: v.encode() for k, v in values.items()}


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


@settings(max_examples=500, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "content-type",
                "upload-offset",
                "upload-length",
                "content-length",
                "upload-checksum",
            ]
        ),
        st.text(max_size=30) | st.sampled_from(["0", "10", "100", OCTETS, "sha1 YQ=="]),
    ),
    offset=st.integers(min_value=0, max_value=100),
    length=st.none() | st.integers(min_value=100, max_value=200),
)
def test_append_raises_only_protocol_errors(
    headers: dict[str, str], offset: int, length: int | None
) -> None:
    try:
        plan = decide_append(upload(offset=offset, length=length), headers, Limits(200), NOW)
    except errors.ProtocolError:
        return
    assert plan.offset == offset
    if plan.max_bytes is not None:
        assert plan.max_bytes >= 0
