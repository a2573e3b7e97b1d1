"""tus 1.0.0 on the wire: requests parsed into commands, answers and errors formatted."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta

import pytest
from _uploads import LATER, NO_LIMITS, NOW, S, upload
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol import errors, rules
from tusd_protocol.commands import Append, Body, Create
from tusd_protocol.dialects import tus1
from tusd_protocol.dialects.tus1 import (
    MAX_METADATA_HEADER,
    TUS_VERSION,
    appended_headers,
    check_version,
    created_headers,
    effective_method,
    error_headers,
    expiry_headers,
    extensions,
    has_body,
    head_headers,
    options_headers,
    parse_append,
    parse_create,
)
from tusd_protocol.headers import Checksum, format_http_date
from tusd_protocol.rules import (
    ALL_FEATURES,
    AppendPlan,
    CreationPlan,
    Feature,
    Limits,
    conclude_append,
    initial_status,
)
from tusd_protocol.state import ConcatKind, Upload

OCTETS = "application/offset+octet-stream"
RESUMABLE = {"Tus-Resumable": "1.0.0"}
ALL_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)


def patch_headers(offset: int = 0, **extra: str) -> dict[str, str]:
    headers = {"tus-resumable": "1.0.0", "content-type": OCTETS, "upload-offset": str(offset)}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def decide_append(
    target: Upload, headers: dict[str, str], limits: Limits, now: datetime
) -> AppendPlan:
    """A PATCH as the server runs it: tus parses, the rules decide."""
    return rules.decide_append(target, parse_append(headers), limits, now)


def decide_creation(headers: dict[str, str], limits: Limits) -> CreationPlan:
    """A POST as the server runs it: tus parses, the rules decide."""
    return rules.decide_creation(parse_create(headers), limits)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha1_header(data: bytes) -> str:
    return "sha1 " + b64(hashlib.sha1(data).digest())


# --- check_version --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
def test_missing_tus_resumable_is_412_with_tus_version(method: str) -> None:
    with pytest.raises(errors.UnsupportedVersion) as info:
        check_version(method, {})
    assert info.value.status == 412
    assert info.value.headers == {"Tus-Version": "1.0.0"}


@pytest.mark.parametrize("value", ["0.2.2", "1.0", "1.0.0 ", "", "2.0.0"])
def test_unsupported_tus_resumable_is_412(value: str) -> None:
    with pytest.raises(errors.UnsupportedVersion):
        check_version("PATCH", {"tus-resumable": value})


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
def test_tus_resumable_1_0_0_is_accepted(method: str) -> None:
    check_version(method, {"tus-resumable": TUS_VERSION})


@pytest.mark.parametrize("method", ["OPTIONS", "GET"])
@pytest.mark.parametrize("headers", [{}, {"tus-resumable": "0.0.1"}])
def test_options_and_get_never_require_tus_resumable(method: str, headers: dict[str, str]) -> None:
    """PROTOCOL 2/3: OPTIONS is how a client learns the version; GET is a plain download."""
    check_version(method, headers)


# --- effective_method -----------------------------------------------------------------


@pytest.mark.parametrize("override", ["PATCH", "DELETE", "HEAD", "GET", "patch", " Delete "])
def test_method_override_on_post_replaces_the_method(override: str) -> None:
    assert effective_method("POST", {"x-http-method-override": override}) == (
        override.strip().upper()
    )


def test_post_without_override_stays_post() -> None:
    assert effective_method("POST", {}) == "POST"


def test_method_override_is_ignored_on_other_methods() -> None:
    assert effective_method("GET", {"x-http-method-override": "DELETE"}) == "GET"
    assert effective_method("PATCH", {"x-http-method-override": "DELETE"}) == "PATCH"


@pytest.mark.parametrize("override", ["TRACE", "CONNECT", "", "PUT", "POST"])
def test_method_override_to_other_methods_is_400(override: str) -> None:
    with pytest.raises(errors.MethodOverrideNotAllowed) as info:
        effective_method("POST", {"x-http-method-override": override})
    assert info.value.status == 400


# --- has_body -------------------------------------------------------------------------


def test_has_body() -> None:
    assert has_body({"content-length": "1"})
    assert not has_body({"content-length": "0"})
    assert has_body({"transfer-encoding": "Chunked"})
    assert not has_body({})


def test_has_body_with_malformed_content_length_is_400() -> None:
    with pytest.raises(errors.InvalidLength):
        has_body({"content-length": "-1"})


# --- parse_create ---------------------------------------------------------------------


def test_creation_with_length() -> None:
    command = parse_create({"upload-length": "100"})
    assert command == Create(100)
    assert command.body is None
    assert not command.completes  # tus never completes in one request
    plan = decide_creation({"upload-length": "100"}, NO_LIMITS)
    assert plan.length == 100
    assert plan.initial_append is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_with_deferred_length() -> None:
    assert parse_create({"upload-defer-length": "1"}).length is None
    plan = decide_creation({"upload-defer-length": "1"}, NO_LIMITS)
    assert plan.length is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_of_length_zero_is_finished_at_once() -> None:
    plan = decide_creation({"upload-length": "0"}, NO_LIMITS)
    assert plan.length == 0
    assert initial_status(plan) is S.FINISHED


def test_creation_with_length_and_defer_length_is_400() -> None:
    with pytest.raises(errors.LengthConflict) as info:
        parse_create({"upload-length": "100", "upload-defer-length": "1"})
    assert info.value.status == 400


def test_creation_without_length_is_400() -> None:
    with pytest.raises(errors.LengthRequired) as info:
        parse_create({})
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["0", "2", "true", " 1", ""])
def test_creation_with_defer_length_other_than_1_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidDeferLength) as info:
        parse_create({"upload-defer-length": value})
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["-1", "+1", "1.5", "", "abc", str(2**63)])
def test_creation_with_malformed_length_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidLength) as info:
        parse_create({"upload-length": value})
    assert info.value.status == 400


def test_creation_over_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation({"upload-length": "1001"}, Limits(max_size=1000))
    assert info.value.status == 413


def test_creation_keeps_the_metadata_header_byte_for_byte() -> None:
    header = "filename d29ybGQ=,  flag"  # spacing the parser tolerates is kept as sent
    command = parse_create({"upload-length": "1", "upload-metadata": header})
    assert command.metadata_header == header
    assert command.metadata == {"filename": b"world", "flag": None}
    plan = decide_creation({"upload-length": "1", "upload-metadata": header}, NO_LIMITS)
    assert plan.metadata_header == header
    assert plan.metadata == {"filename": b"world", "flag": None}


def test_creation_with_invalid_metadata_is_400() -> None:
    with pytest.raises(errors.InvalidMetadata) as info:
        parse_create({"upload-length": "1", "upload-metadata": "a YQ==,a YQ=="})
    assert info.value.status == 400


def test_creation_with_huge_metadata_is_431() -> None:
    header = "k " + "A" * MAX_METADATA_HEADER
    with pytest.raises(errors.HeaderTooLarge) as info:
        parse_create({"upload-length": "1", "upload-metadata": header})
    assert info.value.status == 431


def test_creation_of_a_partial_upload() -> None:
    command = parse_create({"upload-length": "5", "upload-concat": "partial"})
    assert command.concat is ConcatKind.PARTIAL
    assert command.concat_header == "partial"
    assert command.length == 5
    plan = decide_creation({"upload-length": "5", "upload-concat": "partial"}, NO_LIMITS)
    assert plan.concat_kind is ConcatKind.PARTIAL
    assert plan.concat_header == "partial"
    assert plan.length == 5


def test_creation_of_a_final_upload_lists_partials_in_order() -> None:
    header = "final;/files/b /files/a /files/b"
    command = parse_create({"upload-concat": header})
    assert command.concat is ConcatKind.FINAL
    assert command.partial_urls == ("/files/b", "/files/a", "/files/b")
    assert command.concat_header == header
    plan = decide_creation({"upload-concat": header}, NO_LIMITS)
    assert plan.partial_urls == ("/files/b", "/files/a", "/files/b")
    assert plan.concat_header == header
    assert plan.length is None
    assert initial_status(plan) is S.CONCATENATING


@pytest.mark.parametrize("extra", [{"upload-length": "5"}, {"upload-defer-length": "1"}])
def test_final_upload_with_a_length_is_400(extra: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidPartial) as info:
        parse_create({"upload-concat": "final;/files/a", **extra})
    assert info.value.status == 400


@pytest.mark.parametrize(
    "extra",
    [{"content-length": "3", "content-type": OCTETS}, {"transfer-encoding": "chunked"}],
)
def test_final_upload_with_a_body_is_400(extra: dict[str, str]) -> None:
    with pytest.raises(errors.ProtocolError) as info:
        parse_create({"upload-concat": "final;/files/a", **extra})
    assert info.value.status == 400


def test_creation_with_garbage_concat_is_400() -> None:
    with pytest.raises(errors.InvalidConcat):
        parse_create({"upload-length": "1", "upload-concat": "final"})


def test_creation_with_upload_carries_the_body() -> None:
    headers = {
        "upload-length": "10",
        "content-length": "4",
        "content-type": OCTETS,
        "upload-checksum": sha1_header(b"abcd"),
    }
    checksum = Checksum("sha1", hashlib.sha1(b"abcd").digest())
    assert parse_create(headers).body == Body(4, checksum)
    plan = decide_creation(headers, NO_LIMITS)
    assert plan.initial_append == AppendPlan(0, 10, 4, None, checksum)


def test_creation_with_chunked_body_plans_an_append() -> None:
    headers = {"upload-length": "10", "transfer-encoding": "chunked", "content-type": OCTETS}
    assert parse_create(headers).body == Body(None)
    plan = decide_creation(headers, NO_LIMITS)
    assert plan.initial_append is not None
    assert plan.initial_append.body_length is None
    assert plan.initial_append.max_bytes == 10


def test_creation_with_empty_body_plans_no_append() -> None:
    headers = {"upload-length": "10", "content-length": "0"}
    assert parse_create(headers).body is None
    assert decide_creation(headers, NO_LIMITS).initial_append is None


def test_creation_without_a_body_needs_no_content_type() -> None:
    assert parse_create({"upload-length": "10", "content-type": "text/plain"}).body is None


def test_creation_with_upload_needs_offset_content_type_415() -> None:
    headers = {"upload-length": "10", "content-length": "4", "content-type": "text/plain"}
    with pytest.raises(errors.UnsupportedMediaType) as info:
        parse_create(headers)
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
        parse_create(headers)
    assert info.value.status == 400


def test_creation_with_malformed_content_length_is_400() -> None:
    with pytest.raises(errors.InvalidLength):
        parse_create({"upload-length": "3", "content-length": "-1"})


@pytest.mark.parametrize(
    ("headers", "feature"),
    [
        ({"upload-length": "5", "upload-concat": "partial"}, Feature.CONCATENATION),
        ({"upload-concat": "final;/files/a"}, Feature.CONCATENATION),
        ({"upload-defer-length": "1"}, Feature.DEFERRED_LENGTH),
        (
            {"upload-length": "5", "content-length": "5", "content-type": OCTETS},
            Feature.CREATION_WITH_UPLOAD,
        ),
    ],
)
def test_creation_asking_for_a_missing_feature_is_400(
    headers: dict[str, str], feature: Feature
) -> None:
    with pytest.raises(errors.ExtensionDisabled) as info:
        decide_creation(headers, Limits(features=ALL_FEATURES - {feature}))
    assert info.value.status == 400


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


# --- parse_append ---------------------------------------------------------------------


def test_append_parses_offset_and_body() -> None:
    assert parse_append(patch_headers(10, content_length="5")) == Append(10, Body(5))
    assert parse_append(patch_headers(10)) == Append(10, Body(None))
    assert not parse_append(patch_headers(10)).completes  # tus never completes a length


def test_append_at_the_current_offset() -> None:
    plan = decide_append(upload(offset=10), patch_headers(10, content_length="5"), NO_LIMITS, NOW)
    assert plan == AppendPlan(offset=10, max_bytes=90, body_length=5)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream", ""])
def test_append_needs_offset_octet_stream_415(content_type: str | None) -> None:
    headers = patch_headers(0)
    if content_type is None:
        del headers["content-type"]
    else:
        headers["content-type"] = content_type
    with pytest.raises(errors.UnsupportedMediaType) as info:
        parse_append(headers)
    assert info.value.status == 415


def test_append_content_type_parameters_and_case_are_accepted() -> None:
    headers = patch_headers(0, content_type="Application/Offset+Octet-Stream; charset=binary")
    decide_append(upload(), headers, NO_LIMITS, NOW)


def test_append_without_upload_offset_is_400() -> None:
    headers = patch_headers(0)
    del headers["upload-offset"]
    with pytest.raises(errors.InvalidOffset) as info:
        parse_append(headers)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["-1", "+0", " 0", "0 ", "", "zero", "0x0", str(2**63)])
def test_append_with_malformed_upload_offset_is_400(value: str) -> None:
    headers = patch_headers(0)
    headers["upload-offset"] = value
    with pytest.raises(errors.InvalidOffset) as info:
        parse_append(headers)
    assert info.value.status == 400


def test_append_with_malformed_content_length_is_400() -> None:
    with pytest.raises(errors.InvalidLength):
        parse_append(patch_headers(0, content_length="1.5"))


@pytest.mark.parametrize("sent", [0, 5, 11, 100])
def test_append_at_another_offset_is_409_with_upload_offset(sent: int) -> None:
    with pytest.raises(errors.OffsetMismatch) as info:
        decide_append(upload(offset=10), patch_headers(sent), NO_LIMITS, NOW)
    assert info.value.status == 409
    assert error_headers(info.value) == {**RESUMABLE, "Upload-Offset": "10"}


def test_append_with_content_length_past_the_length_is_413() -> None:
    headers = patch_headers(90, content_length="11")
    with pytest.raises(errors.BodyExceedsLength) as info:
        decide_append(upload(offset=90), headers, NO_LIMITS, NOW)
    assert info.value.status == 413


def test_append_with_checksum_carries_it_in_the_plan() -> None:
    headers = patch_headers(0, upload_checksum=sha1_header(b"abc"))
    checksum = Checksum("sha1", hashlib.sha1(b"abc").digest())
    assert parse_append(headers).body.checksum == checksum
    assert decide_append(upload(), headers, NO_LIMITS, NOW).checksum == checksum


@pytest.mark.parametrize("value", ["sha3 " + b64(bytes(32)), "whirlpool YWJj", "SHA1 YWJj"])
def test_append_with_unknown_checksum_algorithm_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidChecksum) as info:
        parse_append(patch_headers(0, upload_checksum=value))
    assert info.value.status == 400


def test_append_with_unsupported_checksum_algorithm_names_it() -> None:
    headers = patch_headers(0, upload_checksum="sha3 " + b64(bytes(32)))
    with pytest.raises(errors.UnsupportedChecksumAlgorithm) as info:
        parse_append(headers)
    assert "sha3" in info.value.message


@pytest.mark.parametrize(
    ("algorithm", "size"), [("sha1", 19), ("sha1", 21), ("md5", 20), ("crc32", 8), ("xxh128", 8)]
)
def test_append_with_wrong_digest_length_parses(algorithm: str, size: int) -> None:
    """PROTOCOL 15: well-formed, so not a 400; it cannot match, which is 460 (test_rules)."""
    headers = patch_headers(
        0, content_length="3", upload_checksum=f"{algorithm} {b64(bytes(size))}"
    )
    assert parse_append(headers).body.checksum == Checksum(algorithm, bytes(size))


def test_append_with_wrong_digest_length_is_460_once_the_body_is_in() -> None:
    headers = patch_headers(10, content_length="3", upload_checksum=f"sha1 {b64(bytes(21))}")
    target = upload(offset=10)
    plan = decide_append(target, headers, NO_LIMITS, NOW)
    with pytest.raises(errors.ChecksumMismatch) as info:
        conclude_append(target, plan, 3, True, hashlib.sha1(b"abc").digest())
    assert info.value.status == 460
    assert error_headers(info.value) == {**RESUMABLE, "Upload-Offset": "10"}


@pytest.mark.parametrize("value", ["sha1", "sha1 ", "sha1 !!!", " sha1 YWJj", "sha1  YWJj"])
def test_append_with_malformed_checksum_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidChecksum) as info:
        parse_append(patch_headers(0, upload_checksum=value))
    assert type(info.value) is errors.InvalidChecksum
    assert info.value.status == 400


# --- deferred length on PATCH -----------------------------------------------------------


def test_deferred_length_is_declared_with_upload_length() -> None:
    assert parse_append(patch_headers(10, upload_length="50")) == Append(10, Body(None), 50)
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, patch_headers(10, upload_length="50"), NO_LIMITS, NOW)
    assert plan.declare_length == 50
    assert plan.max_bytes == 40


def test_deferred_length_with_a_different_second_value_is_400() -> None:
    known = upload(offset=10, length=50)
    with pytest.raises(errors.LengthAlreadySet) as info:
        decide_append(known, patch_headers(10, upload_length="60"), NO_LIMITS, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["-5", "+5", "", "5.0", str(2**63)])
def test_malformed_declared_length_is_400(value: str) -> None:
    with pytest.raises(errors.InvalidLength) as info:
        parse_append(patch_headers(0, upload_length=value))
    assert info.value.status == 400


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


# --- HEAD -----------------------------------------------------------------------------


def test_head_reports_offset_and_length() -> None:
    assert head_headers(upload(offset=10)) == {
        **RESUMABLE,
        "Cache-Control": "no-store",
        "Upload-Offset": "10",
        "Upload-Length": "100",
    }


def test_head_reports_offset_0() -> None:
    assert head_headers(upload(offset=0))["Upload-Offset"] == "0"


def test_head_reports_offset_of_a_finished_upload() -> None:
    headers = head_headers(upload(offset=100, status=S.FINISHED))
    assert headers["Upload-Offset"] == "100"
    assert "Upload-Expires" not in headers


def test_head_of_a_deferred_upload_sends_defer_length_1() -> None:
    headers = head_headers(upload(length=None))
    assert headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in headers


def test_head_echoes_metadata_and_concat_exactly() -> None:
    headers = head_headers(
        upload(metadata_header="a YQ==,flag", concat_header="partial", kind=ConcatKind.PARTIAL)
    )
    assert headers["Upload-Metadata"] == "a YQ==,flag"
    assert headers["Upload-Concat"] == "partial"


def test_head_without_metadata_or_concat_sends_neither() -> None:
    headers = head_headers(upload())
    assert "Upload-Metadata" not in headers
    assert "Upload-Concat" not in headers


def test_head_of_an_unassembled_final_upload_omits_the_offset() -> None:
    final = upload(
        length=30, status=S.CONCATENATING, kind=ConcatKind.FINAL, concat_header="final;/f/a"
    )
    headers = head_headers(final)
    assert "Upload-Offset" not in headers
    assert headers["Upload-Length"] == "30"
    assert headers["Upload-Concat"] == "final;/f/a"


def test_head_of_a_final_upload_with_unknown_length_sends_no_defer_length() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    headers = head_headers(final)
    assert "Upload-Offset" not in headers
    assert "Upload-Defer-Length" not in headers


def test_head_of_an_assembled_final_upload_has_offset_equal_length() -> None:
    final = upload(offset=30, length=30, status=S.FINISHED, kind=ConcatKind.FINAL)
    headers = head_headers(final)
    assert headers["Upload-Offset"] == headers["Upload-Length"] == "30"


def test_head_sends_upload_expires_while_the_upload_can_expire() -> None:
    headers = head_headers(upload(expires_at=LATER))
    assert headers["Upload-Expires"] == format_http_date(LATER)


def test_a_finished_upload_past_its_deadline_sends_no_upload_expires() -> None:
    finished = upload(offset=100, status=S.FINISHED, expires_at=NOW - timedelta(days=1))
    assert head_headers(finished)["Upload-Offset"] == "100"
    assert "Upload-Expires" not in head_headers(finished)
    assert expiry_headers(finished) == {}


def test_expiry_headers_while_concatenating() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL, expires_at=LATER)
    assert expiry_headers(final) == {"Upload-Expires": format_http_date(LATER)}
    assert expiry_headers(upload()) == {}


# --- POST and PATCH answers ---------------------------------------------------------


def test_created_headers() -> None:
    headers = created_headers(upload(expires_at=LATER), "https://tus.example.org/files/x")
    assert headers == {
        **RESUMABLE,
        "Location": "https://tus.example.org/files/x",
        "Upload-Offset": "0",
        "Upload-Expires": format_http_date(LATER),
    }


def test_created_headers_of_an_upload_with_its_bytes() -> None:
    headers = created_headers(upload(offset=4), "/files/x")
    assert headers["Upload-Offset"] == "4"
    assert "Upload-Expires" not in headers


def test_created_headers_of_a_final_upload_omit_the_offset_until_assembled() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    assert "Upload-Offset" not in created_headers(final, "/files/x")
    done = upload(offset=30, length=30, status=S.FINISHED, kind=ConcatKind.FINAL)
    assert created_headers(done, "/files/x")["Upload-Offset"] == "30"


def test_appended_headers() -> None:
    assert appended_headers(upload(offset=30, expires_at=LATER)) == {
        **RESUMABLE,
        "Upload-Offset": "30",
        "Upload-Expires": format_http_date(LATER),
    }


def test_appended_headers_of_a_finished_upload_send_no_expiry() -> None:
    finished = upload(offset=100, status=S.FINISHED, expires_at=LATER)
    assert appended_headers(finished) == {**RESUMABLE, "Upload-Offset": "100"}


# --- errors ---------------------------------------------------------------------------


def test_error_headers_of_a_plain_error_say_only_tus_resumable() -> None:
    assert error_headers(errors.InvalidOffset()) == RESUMABLE


def test_error_headers_name_the_current_offset_upload_offset() -> None:
    assert error_headers(errors.OffsetMismatch(current_offset=0)) == {
        **RESUMABLE,
        "Upload-Offset": "0",
    }
    assert error_headers(errors.ChecksumMismatch(current_offset=7))["Upload-Offset"] == "7"


def test_error_headers_keep_the_error_own_headers() -> None:
    with pytest.raises(errors.UnsupportedVersion) as info:
        check_version("POST", {})
    assert error_headers(info.value) == {**RESUMABLE, "Tus-Version": "1.0.0"}


# --- OPTIONS --------------------------------------------------------------------------


def test_options_headers() -> None:
    headers = options_headers(Limits(max_size=1000), ("sha1", "md5"))
    assert headers["Tus-Resumable"] == "1.0.0"
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Extension"] == ",".join(ALL_EXTENSIONS)
    assert headers["Tus-Checksum-Algorithm"] == "sha1,md5"
    assert headers["Tus-Max-Size"] == "1000"
    assert "Tus-Max-Size" not in options_headers(NO_LIMITS, ("sha1",))


def test_options_without_checksum_lists_no_algorithms() -> None:
    headers = options_headers(Limits(features=ALL_FEATURES - {Feature.CHECKSUM}), ("sha1",))
    assert "Tus-Checksum-Algorithm" not in headers
    assert "checksum" not in headers["Tus-Extension"].split(",")


def test_options_extensions_follow_the_features() -> None:
    limits = Limits(features=frozenset({Feature.TERMINATION}))
    assert options_headers(limits, ())["Tus-Extension"] == "creation,termination"


def test_extensions_with_every_feature() -> None:
    assert extensions(ALL_FEATURES) == ALL_EXTENSIONS
    assert tuple(name for name, _ in tus1.EXTENSIONS) == ALL_EXTENSIONS


def test_extensions_without_features_is_creation_alone() -> None:
    assert extensions(frozenset()) == ("creation",)


def test_extensions_without_concatenation() -> None:
    listed = extensions(ALL_FEATURES - {Feature.CONCATENATION})
    assert "concatenation" not in listed
    assert "concatenation-unfinished" not in listed
    assert len(listed) == len(ALL_EXTENSIONS) - 2


def test_extensions_without_expiration() -> None:
    listed = extensions(ALL_FEATURES - {Feature.EXPIRATION})
    assert "expiration" not in listed
    assert len(listed) == len(ALL_EXTENSIONS) - 1


@pytest.mark.parametrize(
    ("feature", "extension"),
    [
        (Feature.CREATION_WITH_UPLOAD, "creation-with-upload"),
        (Feature.DEFERRED_LENGTH, "creation-defer-length"),
        (Feature.CHECKSUM, "checksum"),
        (Feature.TERMINATION, "termination"),
    ],
)
def test_each_extension_needs_its_feature(feature: Feature, extension: str) -> None:
    assert extension in extensions(ALL_FEATURES)
    assert extension not in extensions(ALL_FEATURES - {feature})


def test_range_reads_are_no_tus_extension() -> None:
    assert extensions(ALL_FEATURES - {Feature.RANGE_READS}) == ALL_EXTENSIONS


@settings(max_examples=100, deadline=None)
@given(st.frozensets(st.sampled_from(list(Feature))))
def test_extensions_keep_tusd_order_and_always_offer_creation(
    features: frozenset[Feature],
) -> None:
    listed = extensions(features)
    assert listed[0] == "creation"
    assert list(listed) == [name for name in ALL_EXTENSIONS if name in listed]
