"""The dialect-neutral rules, one behaviour per test, driven with commands built directly."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest
from _uploads import ID, LATER, NO_LIMITS, NOW, S, upload
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol import errors
from tusd_protocol.checksums import digest_of
from tusd_protocol.commands import Append, Body, Create
from tusd_protocol.headers import Checksum
from tusd_protocol.rules import (
    ALL_FEATURES,
    AppendPlan,
    Feature,
    Limits,
    body_overrun,
    check_available,
    check_partial,
    conclude_append,
    decide_append,
    decide_creation,
    decide_final_length,
    final_ready,
    initial_status,
    is_expired,
    is_valid_upload_id,
    limit_to_store_room,
    next_expiry,
    partial_id_from_url,
    require,
)
from tusd_protocol.state import ConcatKind, Upload, UploadStatus


def append(
    offset: int = 0,
    body_length: int | None = None,
    *,
    checksum: Checksum | None = None,
    declare_length: int | None = None,
    completes: bool = False,
) -> Append:
    return Append(offset, Body(body_length, checksum), declare_length, completes)


def sha1(data: bytes) -> Checksum:
    return Checksum("sha1", hashlib.sha1(data).digest())


def without(*features: Feature) -> Limits:
    return Limits(features=ALL_FEATURES - set(features))


# --- features -------------------------------------------------------------------------


def test_every_feature_is_on_by_default() -> None:
    assert NO_LIMITS.features == frozenset(Feature)


def test_require_passes_for_an_available_feature() -> None:
    require(NO_LIMITS, Feature.CONCATENATION, "concatenation")


def test_require_refuses_a_missing_feature_with_400() -> None:
    with pytest.raises(errors.ExtensionDisabled) as info:
        require(without(Feature.CONCATENATION), Feature.CONCATENATION, "concatenation")
    assert info.value.status == 400
    assert info.value.code == "ERR_EXTENSION_UNSUPPORTED"
    assert "concatenation" in info.value.message


# --- decide_creation ------------------------------------------------------------------


def test_creation_with_length() -> None:
    plan = decide_creation(Create(100), NO_LIMITS)
    assert plan.length == 100
    assert plan.concat_kind is ConcatKind.NONE
    assert plan.initial_append is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_with_deferred_length() -> None:
    plan = decide_creation(Create(None), NO_LIMITS)
    assert plan.length is None
    assert initial_status(plan) is S.RECEIVING


def test_creation_of_length_zero_is_finished_at_once() -> None:
    plan = decide_creation(Create(0), NO_LIMITS)
    assert plan.length == 0
    assert initial_status(plan) is S.FINISHED


def test_creation_over_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation(Create(1001), Limits(max_size=1000))
    assert info.value.status == 413


def test_creation_at_max_size_is_accepted() -> None:
    assert decide_creation(Create(1000), Limits(max_size=1000)).length == 1000


def test_creation_keeps_the_metadata_header_byte_for_byte() -> None:
    header = "filename d29ybGQ=,  flag"
    metadata: dict[str, bytes | None] = {"filename": b"world", "flag": None}
    plan = decide_creation(Create(1, metadata, header), NO_LIMITS)
    assert plan.metadata_header == header
    assert plan.metadata == metadata


def test_creation_of_a_partial_upload() -> None:
    command = Create(5, concat=ConcatKind.PARTIAL, concat_header="partial")
    plan = decide_creation(command, NO_LIMITS)
    assert plan.concat_kind is ConcatKind.PARTIAL
    assert plan.concat_header == "partial"
    assert plan.length == 5
    assert initial_status(plan) is S.RECEIVING


def test_creation_of_a_final_upload_lists_partials_in_order() -> None:
    header = "final;/files/b /files/a /files/b"
    urls = ("/files/b", "/files/a", "/files/b")
    command = Create(None, concat=ConcatKind.FINAL, partial_urls=urls, concat_header=header)
    plan = decide_creation(command, NO_LIMITS)
    assert plan.concat_kind is ConcatKind.FINAL
    assert plan.partial_urls == urls
    assert plan.concat_header == header
    assert plan.length is None
    assert plan.initial_append is None
    assert initial_status(plan) is S.CONCATENATING


def test_final_upload_with_a_body_is_400() -> None:
    command = Create(None, concat=ConcatKind.FINAL, partial_urls=("/files/a",), body=Body(3))
    with pytest.raises(errors.ProtocolError) as info:
        decide_creation(command, NO_LIMITS)
    assert info.value.status == 400


def test_creation_with_upload_plans_an_append_at_0() -> None:
    plan = decide_creation(Create(10, body=Body(4, sha1(b"abcd"))), NO_LIMITS)
    assert plan.initial_append == AppendPlan(0, 10, 4, None, sha1(b"abcd"))
    assert plan.length == 10
    assert initial_status(plan) is S.RECEIVING


def test_creation_with_chunked_body_plans_an_append() -> None:
    plan = decide_creation(Create(10, body=Body(None)), NO_LIMITS)
    assert plan.initial_append is not None
    assert plan.initial_append.body_length is None
    assert plan.initial_append.max_bytes == 10


def test_creation_without_a_body_plans_no_append() -> None:
    assert decide_creation(Create(10, body=None), NO_LIMITS).initial_append is None


def test_creation_with_body_past_length_is_413() -> None:
    with pytest.raises(errors.BodyExceedsLength) as info:
        decide_creation(Create(3, body=Body(4)), NO_LIMITS)
    assert info.value.status == 413


def test_deferred_creation_with_body_past_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation(Create(None, body=Body(11)), Limits(max_size=10))
    assert info.value.status == 413


def test_deferred_creation_with_chunked_body_is_bounded_by_max_size() -> None:
    plan = decide_creation(Create(None, body=Body(None)), Limits(max_size=10))
    assert plan.initial_append is not None
    assert plan.initial_append.max_bytes == 10


# --- decide_creation: features ----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        Create(5, concat=ConcatKind.PARTIAL, concat_header="partial"),
        Create(None, concat=ConcatKind.FINAL, partial_urls=("/files/a",)),
    ],
)
def test_creation_with_concat_needs_concatenation(command: Create) -> None:
    with pytest.raises(errors.ExtensionDisabled) as info:
        decide_creation(command, without(Feature.CONCATENATION))
    assert info.value.status == 400


def test_creation_with_deferred_length_needs_deferred_length() -> None:
    with pytest.raises(errors.ExtensionDisabled) as info:
        decide_creation(Create(None), without(Feature.DEFERRED_LENGTH))
    assert info.value.status == 400


def test_creation_with_deferred_length_and_chunked_body_needs_deferred_length() -> None:
    with pytest.raises(errors.ExtensionDisabled):
        decide_creation(Create(None, body=Body(None)), without(Feature.DEFERRED_LENGTH))


def test_creation_with_length_needs_no_deferred_length() -> None:
    assert decide_creation(Create(5), without(Feature.DEFERRED_LENGTH)).length == 5


def test_plain_creation_needs_no_concatenation() -> None:
    assert decide_creation(Create(5), without(Feature.CONCATENATION)).length == 5


def test_creation_with_a_body_needs_creation_with_upload() -> None:
    with pytest.raises(errors.ExtensionDisabled):
        decide_creation(Create(5, body=Body(5)), without(Feature.CREATION_WITH_UPLOAD))
    assert decide_creation(Create(5), without(Feature.CREATION_WITH_UPLOAD)).length == 5


# --- decide_creation: completes (IETF Upload-Complete: ?1) ------------------------------


def test_completing_creation_with_a_body_of_known_length_knows_the_length() -> None:
    plan = decide_creation(Create(None, body=Body(7), completes=True), NO_LIMITS)
    assert plan.length == 7
    assert plan.initial_append is not None
    assert plan.initial_append.max_bytes == 7
    assert plan.initial_append.declare_length is None  # the length is the upload's already
    assert plan.initial_append.completes


def test_completing_creation_of_known_length_needs_no_deferred_length() -> None:
    command = Create(None, body=Body(7), completes=True)
    assert decide_creation(command, without(Feature.DEFERRED_LENGTH)).length == 7


def test_completing_creation_with_the_same_length_is_accepted() -> None:
    plan = decide_creation(Create(7, body=Body(7), completes=True), NO_LIMITS)
    assert plan.length == 7


def test_completing_creation_with_another_length_is_400() -> None:
    with pytest.raises(errors.InconsistentLength) as info:
        decide_creation(Create(10, body=Body(7), completes=True), NO_LIMITS)
    assert info.value.status == 400
    assert info.value.code == "ERR_INCONSISTENT_LENGTH"


def test_completing_creation_past_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_creation(Create(None, body=Body(11), completes=True), Limits(max_size=10))
    assert info.value.status == 413


def test_completing_creation_at_max_size_is_accepted() -> None:
    command = Create(None, body=Body(10), completes=True)
    assert decide_creation(command, Limits(max_size=10)).length == 10


def test_completing_creation_with_chunked_body_learns_the_length_at_the_end() -> None:
    plan = decide_creation(Create(None, body=Body(None), completes=True), NO_LIMITS)
    assert plan.length is None
    assert plan.initial_append is not None
    assert plan.initial_append.completes
    new = upload(length=None)
    outcome = conclude_append(new, plan.initial_append, 12, True, None)
    assert (outcome.new_length, outcome.new_offset, outcome.new_status) == (12, 12, S.FINISHED)


# --- decide_append --------------------------------------------------------------------


def test_append_at_the_current_offset() -> None:
    plan = decide_append(upload(offset=10), append(10, 5), NO_LIMITS, NOW)
    assert plan == AppendPlan(offset=10, max_bytes=90, body_length=5)


def test_append_without_content_length_is_bounded_by_the_length() -> None:
    plan = decide_append(upload(offset=10), append(10), NO_LIMITS, NOW)
    assert plan.max_bytes == 90
    assert plan.body_length is None


def test_append_to_deferred_upload_without_limit_is_unbounded() -> None:
    plan = decide_append(upload(length=None), append(0), NO_LIMITS, NOW)
    assert plan.max_bytes is None


def test_append_to_deferred_upload_is_bounded_by_max_size() -> None:
    plan = decide_append(upload(offset=4, length=None), append(4), Limits(max_size=10), NOW)
    assert plan.max_bytes == 6


@pytest.mark.parametrize("sent", [0, 5, 11, 100])
def test_append_at_another_offset_is_409_with_the_current_offset(sent: int) -> None:
    with pytest.raises(errors.OffsetMismatch) as info:
        decide_append(upload(offset=10), append(sent), NO_LIMITS, NOW)
    assert info.value.status == 409
    assert info.value.code == "ERR_OFFSET_MISMATCH"
    assert info.value.current_offset == 10
    assert info.value.headers == {}  # each dialect names the offset in its own header


def test_append_with_content_length_past_the_length_is_413() -> None:
    with pytest.raises(errors.BodyExceedsLength) as info:
        decide_append(upload(offset=90), append(90, 11), NO_LIMITS, NOW)
    assert info.value.status == 413
    assert info.value.code == "ERR_BODY_EXCEEDS_LENGTH"


def test_append_with_content_length_up_to_the_length_is_accepted() -> None:
    plan = decide_append(upload(offset=90), append(90, 10), NO_LIMITS, NOW)
    assert plan.max_bytes == 10


def test_append_past_max_size_of_a_deferred_upload_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_append(upload(length=None), append(0, 11), Limits(max_size=10), NOW)
    assert type(info.value) is errors.EntityTooLarge
    assert info.value.status == 413


def test_append_to_a_final_upload_is_403() -> None:
    final = upload(length=None, status=S.CONCATENATING, kind=ConcatKind.FINAL)
    with pytest.raises(errors.FinalUploadNotPatchable) as info:
        decide_append(final, append(0), NO_LIMITS, NOW)
    assert info.value.status == 403


def test_append_to_a_finished_final_upload_is_403() -> None:
    final = upload(offset=100, status=S.FINISHED, kind=ConcatKind.FINAL)
    with pytest.raises(errors.FinalUploadNotPatchable):
        decide_append(final, append(100), NO_LIMITS, NOW)


def test_append_to_a_partial_upload_is_allowed() -> None:
    decide_append(upload(kind=ConcatKind.PARTIAL), append(0), NO_LIMITS, NOW)


def test_append_to_an_expired_upload_is_410() -> None:
    with pytest.raises(errors.UploadGone) as info:
        decide_append(upload(expires_at=NOW), append(0), NO_LIMITS, NOW)
    assert info.value.status == 410


def test_append_before_expiry_is_allowed() -> None:
    decide_append(upload(expires_at=LATER), append(0), NO_LIMITS, NOW)


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_append_to_a_gone_upload_is_410(status: UploadStatus) -> None:
    with pytest.raises(errors.UploadGone) as info:
        decide_append(upload(status=status), append(0), NO_LIMITS, NOW)
    assert info.value.status == 410


def test_append_with_checksum_carries_it_in_the_plan() -> None:
    plan = decide_append(upload(), append(0, checksum=sha1(b"abc")), NO_LIMITS, NOW)
    assert plan.checksum == sha1(b"abc")


# --- decide_append: stores_bytes ----------------------------------------------------------


@pytest.mark.parametrize("body_length", [0, None])
def test_empty_append_at_the_end_of_a_finished_upload_stores_nothing(
    body_length: int | None,
) -> None:
    finished = upload(offset=100, status=S.FINISHED)
    plan = decide_append(finished, append(100, body_length), NO_LIMITS, NOW)
    assert plan.stores_bytes is False
    assert plan.max_bytes == 0


def test_append_with_bytes_to_a_finished_upload_is_413() -> None:
    finished = upload(offset=100, status=S.FINISHED)
    with pytest.raises(errors.BodyExceedsLength):
        decide_append(finished, append(100, 1), NO_LIMITS, NOW)


@pytest.mark.parametrize(
    ("target", "command"),
    [
        (upload(offset=10), append(10, 5)),
        (upload(offset=10), append(10, 0)),
        (upload(offset=10), append(10)),
        (upload(length=None), append(0, 0)),
        (upload(length=None), append(0, 0, declare_length=0)),
        (upload(kind=ConcatKind.PARTIAL), append(0, 3)),
    ],
)
def test_every_other_append_stores_bytes(target: Upload, command: Append) -> None:
    assert decide_append(target, command, NO_LIMITS, NOW).stores_bytes is True


# --- decide_append: completes (IETF Upload-Complete: ?1) --------------------------------


def test_completing_append_to_a_deferred_upload_fixes_the_length() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, 5, completes=True), NO_LIMITS, NOW)
    assert plan.declare_length == 15
    assert plan.max_bytes == 5
    assert plan.completes
    outcome = conclude_append(deferred, plan, 5, True, None)
    assert (outcome.new_length, outcome.new_offset, outcome.new_status) == (15, 15, S.FINISHED)


def test_completing_append_at_the_known_length_is_accepted() -> None:
    known = upload(offset=90, length=100)
    plan = decide_append(known, append(90, 10, completes=True), NO_LIMITS, NOW)
    assert plan.declare_length is None
    assert conclude_append(known, plan, 10, True, None).new_status is S.FINISHED


@pytest.mark.parametrize("body_length", [5, 11])
def test_completing_append_short_of_or_past_the_known_length_is_400(body_length: int) -> None:
    with pytest.raises(errors.InconsistentLength) as info:
        decide_append(upload(offset=90), append(90, body_length, completes=True), NO_LIMITS, NOW)
    assert info.value.status == 400


def test_completing_append_against_the_declared_length_is_400() -> None:
    deferred = upload(offset=10, length=None)
    command = append(10, 5, declare_length=20, completes=True)
    with pytest.raises(errors.InconsistentLength):
        decide_append(deferred, command, NO_LIMITS, NOW)


def test_completing_append_matching_the_declared_length_is_accepted() -> None:
    deferred = upload(offset=10, length=None)
    command = append(10, 10, declare_length=20, completes=True)
    assert decide_append(deferred, command, NO_LIMITS, NOW).declare_length == 20


def test_completing_append_past_max_size_is_413() -> None:
    deferred = upload(offset=4, length=None)
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_append(deferred, append(4, 7, completes=True), Limits(max_size=10), NOW)
    assert info.value.status == 413


def test_completing_append_at_max_size_is_accepted() -> None:
    deferred = upload(offset=4, length=None)
    plan = decide_append(deferred, append(4, 6, completes=True), Limits(max_size=10), NOW)
    assert plan.declare_length == 10


def test_completing_chunked_append_learns_the_length_at_the_end() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, completes=True), NO_LIMITS, NOW)
    assert plan.declare_length is None
    outcome = conclude_append(deferred, plan, 25, True, None)
    assert (outcome.new_length, outcome.new_offset, outcome.new_status) == (35, 35, S.FINISHED)


def test_completing_chunked_append_short_of_the_known_length_is_400() -> None:
    known = upload(offset=10, length=100)
    plan = decide_append(known, append(10, completes=True), NO_LIMITS, NOW)
    with pytest.raises(errors.InconsistentLength):
        conclude_append(known, plan, 20, True, None)


def test_interrupted_completing_append_does_not_fix_the_length() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, completes=True), NO_LIMITS, NOW)
    outcome = conclude_append(deferred, plan, 7, False, None)
    assert (outcome.new_length, outcome.new_offset, outcome.new_status) == (None, 17, S.RECEIVING)


def test_append_that_does_not_complete_leaves_a_deferred_length_open() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, 5), NO_LIMITS, NOW)
    assert plan.declare_length is None
    assert conclude_append(deferred, plan, 5, True, None).new_length is None


# --- deferred length ------------------------------------------------------------------


def test_deferred_length_is_declared_on_append() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, declare_length=50), NO_LIMITS, NOW)
    assert plan.declare_length == 50
    assert plan.max_bytes == 40
    outcome = conclude_append(deferred, plan, 40, True, None)
    assert outcome.new_length == 50
    assert outcome.new_offset == 50
    assert outcome.new_status is S.FINISHED


def test_deferred_length_declared_once_may_be_repeated_with_the_same_value() -> None:
    known = upload(offset=10, length=50)
    plan = decide_append(known, append(10, declare_length=50), NO_LIMITS, NOW)
    assert plan.declare_length is None
    assert conclude_append(known, plan, 5, True, None).new_length == 50


def test_deferred_length_with_a_different_second_value_is_400() -> None:
    known = upload(offset=10, length=50)
    with pytest.raises(errors.LengthAlreadySet) as info:
        decide_append(known, append(10, declare_length=60), NO_LIMITS, NOW)
    assert info.value.status == 400


def test_declared_length_below_the_offset_is_400() -> None:
    deferred = upload(offset=10, length=None)
    with pytest.raises(errors.LengthTooSmall) as info:
        decide_append(deferred, append(10, declare_length=9), NO_LIMITS, NOW)
    assert info.value.status == 400


def test_declared_length_over_max_size_is_413() -> None:
    with pytest.raises(errors.EntityTooLarge) as info:
        decide_append(upload(length=None), append(0, declare_length=11), Limits(max_size=10), NOW)
    assert info.value.status == 413


def test_declared_length_bounds_the_body() -> None:
    with pytest.raises(errors.BodyExceedsLength):
        decide_append(upload(length=None), append(0, 6, declare_length=5), NO_LIMITS, NOW)


def test_declaring_the_current_offset_as_length_finishes_on_an_empty_patch() -> None:
    deferred = upload(offset=10, length=None)
    plan = decide_append(deferred, append(10, declare_length=10), NO_LIMITS, NOW)
    outcome = conclude_append(deferred, plan, 0, True, None)
    assert outcome.new_status is S.FINISHED
    assert outcome.new_length == 10


# --- limit_to_store_room ------------------------------------------------------------------


def test_store_without_a_room_limit_leaves_the_plan() -> None:
    plan = AppendPlan(0, None, None)
    assert limit_to_store_room(plan, None) is plan


def test_store_room_bounds_an_unbounded_append() -> None:
    limited = limit_to_store_room(AppendPlan(10, None, None), 50)
    assert limited.max_bytes == 50
    assert limited.store_limited


def test_store_room_larger_than_the_plan_leaves_it() -> None:
    plan = AppendPlan(10, 20, None)
    assert limit_to_store_room(plan, 50) == plan


def test_body_past_the_store_room_is_413() -> None:
    with pytest.raises(errors.StorageRoomExceeded) as info:
        limit_to_store_room(AppendPlan(10, None, 51), 50)
    assert info.value.status == 413


def test_declared_length_past_the_store_room_is_413() -> None:
    with pytest.raises(errors.StorageRoomExceeded):
        limit_to_store_room(AppendPlan(10, 70, None, declare_length=70), 50)


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
    plan = AppendPlan(10, 90, 3, None, Checksum("sha1", digest))
    outcome = conclude_append(upload(offset=10), plan, 3, True, digest)
    assert outcome.new_offset == 13
    assert outcome.kept == 3


def test_conclude_with_checksum_mismatch_is_460_and_keeps_the_offset() -> None:
    plan = AppendPlan(10, 90, 3, None, sha1(b"abc"))
    with pytest.raises(errors.ChecksumMismatch) as info:
        conclude_append(upload(offset=10), plan, 3, True, hashlib.sha1(b"abd").digest())
    assert info.value.status == 460
    assert info.value.code == "ERR_CHECKSUM_MISMATCH"
    assert info.value.current_offset == 10
    assert info.value.headers == {}


@pytest.mark.parametrize(
    ("algorithm", "size"), [("sha1", 19), ("sha1", 21), ("md5", 20), ("crc32", 8), ("xxh128", 8)]
)
def test_digest_of_the_wrong_length_is_a_460_mismatch(algorithm: str, size: int) -> None:
    """PROTOCOL 15: a well-formed digest that differs from the body's, whatever its length."""
    target = upload(offset=10)
    command = append(10, 3, checksum=Checksum(algorithm, bytes(size)))
    plan = decide_append(target, command, NO_LIMITS, NOW)
    with pytest.raises(errors.ChecksumMismatch) as info:
        conclude_append(target, plan, 3, True, digest_of(algorithm, b"abc"))
    assert info.value.status == 460
    assert info.value.current_offset == 10


def test_conclude_of_an_interrupted_checksummed_chunk_keeps_nothing() -> None:
    plan = AppendPlan(10, 90, 50, None, Checksum("sha1", bytes(20)))
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


def test_body_overrun_past_the_store_room_names_the_store() -> None:
    limited = limit_to_store_room(AppendPlan(10, None, None), 50)
    assert type(body_overrun(limited, None, NO_LIMITS)) is errors.StorageRoomExceeded


# --- availability (HEAD, PATCH, GET, DELETE) -----------------------------------------


def test_a_receiving_upload_is_available() -> None:
    check_available(upload(), NOW)
    check_available(upload(expires_at=LATER), NOW)


@pytest.mark.parametrize("status", [S.TERMINATED, S.EXPIRED])
def test_a_gone_upload_is_410(status: UploadStatus) -> None:
    with pytest.raises(errors.UploadGone) as info:
        check_available(upload(status=status), NOW)
    assert info.value.status == 410


@pytest.mark.parametrize("expires_at", [NOW, NOW - timedelta(seconds=1)])
def test_an_upload_past_its_deadline_is_410(expires_at: datetime) -> None:
    assert is_expired(upload(expires_at=expires_at), NOW)
    with pytest.raises(errors.UploadGone):
        check_available(upload(expires_at=expires_at), NOW)


def test_a_finished_upload_past_its_deadline_does_not_expire() -> None:
    finished = upload(offset=100, status=S.FINISHED, expires_at=NOW - timedelta(days=1))
    assert not is_expired(finished, NOW)
    check_available(finished, NOW)


# --- expiry ---------------------------------------------------------------------------


def test_next_expiry_moves_with_activity() -> None:
    limits = Limits(expiration=timedelta(hours=2))
    assert next_expiry(limits, NOW, S.RECEIVING) == NOW + timedelta(hours=2)
    assert next_expiry(limits, NOW, S.CONCATENATING) == NOW + timedelta(hours=2)


def test_next_expiry_is_none_for_finished_or_without_expiration() -> None:
    assert next_expiry(Limits(expiration=timedelta(hours=2)), NOW, S.FINISHED) is None
    assert next_expiry(NO_LIMITS, NOW, S.RECEIVING) is None


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


def test_check_partial_accepts_a_live_partial() -> None:
    check_partial(partial(3, S.RECEIVING, expires_at=LATER), NOW)


# --- properties -----------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    offset=st.integers(min_value=0, max_value=100),
    length=st.none() | st.integers(min_value=100, max_value=200),
    #: mostly at the upload's offset, sometimes off by a little
    drift=st.just(0) | st.integers(min_value=-10, max_value=10),
    body_length=st.none() | st.integers(min_value=0, max_value=300),
    declare_length=st.none() | st.integers(min_value=0, max_value=300),
    completes=st.booleans(),
    max_size=st.none() | st.integers(min_value=0, max_value=250),
)
def test_append_plans_stay_inside_the_upload_and_the_limit(
    offset: int,
    length: int | None,
    drift: int,
    body_length: int | None,
    declare_length: int | None,
    completes: bool,
    max_size: int | None,
) -> None:
    target = upload(offset=offset, length=length)
    command = append(
        max(offset + drift, 0), body_length, declare_length=declare_length, completes=completes
    )
    try:
        plan = decide_append(target, command, Limits(max_size=max_size), NOW)
    except errors.ProtocolError as error:
        assert 400 <= error.status < 500
        return
    assert plan.offset == offset
    assert plan.stores_bytes
    known = length if length is not None else plan.declare_length
    if known is not None:
        assert plan.max_bytes == known - offset
    if plan.max_bytes is not None:
        assert plan.max_bytes >= 0
        if body_length is not None:
            assert body_length <= plan.max_bytes
    if length is None and plan.declare_length is not None and max_size is not None:
        assert plan.declare_length <= max_size
    if length is None and max_size is not None:
        assert plan.max_bytes is not None
        assert offset + plan.max_bytes <= max(max_size, offset)
