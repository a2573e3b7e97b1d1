"""The upload state machine as data: TRANSITIONS, check_transition, Upload."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusd_protocol.errors import ServerFault
from tusd_protocol.state import (
    GONE_STATUSES,
    INITIAL_STATUSES,
    TRANSITIONS,
    ConcatKind,
    Upload,
    UploadStatus,
    can_transition,
    check_transition,
)

S = UploadStatus
statuses = st.sampled_from(list(UploadStatus))

LEGAL = {
    (S.RECEIVING, S.RECEIVING),
    (S.RECEIVING, S.FINISHED),
    (S.RECEIVING, S.TERMINATED),
    (S.RECEIVING, S.EXPIRED),
    (S.RECEIVING, S.FAILED),  # a pre-finish hook refused the complete upload
    (S.CONCATENATING, S.FINISHED),
    (S.CONCATENATING, S.TERMINATED),
    (S.CONCATENATING, S.EXPIRED),
    (S.FINISHED, S.TERMINATED),
}


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(UploadStatus)


def test_transitions_only_lead_to_statuses() -> None:
    for targets in TRANSITIONS.values():
        assert targets <= set(UploadStatus)


def test_the_table_is_exactly_the_intended_one() -> None:
    assert {(old, new) for old, targets in TRANSITIONS.items() for new in targets} == LEGAL


@pytest.mark.parametrize("status", sorted(GONE_STATUSES))
def test_terminal_states_have_no_exits(status: UploadStatus) -> None:
    assert TRANSITIONS[status] == frozenset()
    for new in UploadStatus:
        assert not can_transition(status, new)


def test_gone_statuses_are_terminated_expired_and_failed() -> None:
    assert frozenset({S.TERMINATED, S.EXPIRED, S.FAILED}) == GONE_STATUSES


def test_new_uploads_never_start_gone() -> None:
    assert not INITIAL_STATUSES & GONE_STATUSES
    assert S.RECEIVING in INITIAL_STATUSES
    assert S.CONCATENATING in INITIAL_STATUSES
    assert S.FINISHED in INITIAL_STATUSES  # Upload-Length: 0


def test_finished_uploads_never_expire_or_receive_again() -> None:
    assert not can_transition(S.FINISHED, S.EXPIRED)
    assert not can_transition(S.FINISHED, S.RECEIVING)
    assert not can_transition(S.FINISHED, S.CONCATENATING)


def test_a_final_upload_never_receives_bytes() -> None:
    assert not can_transition(S.CONCATENATING, S.RECEIVING)
    assert not can_transition(S.RECEIVING, S.CONCATENATING)


def test_every_terminal_state_is_reachable_from_every_initial_state() -> None:
    def reachable(start: UploadStatus) -> set[UploadStatus]:
        seen, todo = {start}, [start]
        while todo:
            for new in TRANSITIONS[todo.pop()]:
                if new not in seen:
                    seen.add(new)
                    todo.append(new)
        return seen

    for start in INITIAL_STATUSES:
        assert S.TERMINATED in reachable(start)


def test_illegal_transition_is_a_server_fault() -> None:
    with pytest.raises(ServerFault) as info:
        check_transition(S.TERMINATED, S.RECEIVING)
    assert info.value.status == 500
    assert info.value.code == "ERR_INTERNAL"
    assert "terminated" in info.value.message and "receiving" in info.value.message


@settings(max_examples=200, deadline=None)
@given(old=statuses, new=statuses)
def test_check_transition_agrees_with_the_table(old: UploadStatus, new: UploadStatus) -> None:
    legal = (old, new) in LEGAL
    assert can_transition(old, new) is legal
    if legal:
        check_transition(old, new)
    else:
        with pytest.raises(ServerFault):
            check_transition(old, new)


def test_statuses_are_stable_strings() -> None:
    # stored in the database and in Redis: the values must never change
    assert [s.value for s in UploadStatus] == [
        "receiving",
        "concatenating",
        "finished",
        "terminated",
        "expired",
        "failed",
    ]
    assert [k.value for k in ConcatKind] == ["none", "partial", "final"]


def test_upload_properties() -> None:
    plain = Upload("a" * 16, S.RECEIVING, 0, None)
    assert plain.length_deferred
    assert not plain.is_final and not plain.is_partial
    partial = Upload("b" * 16, S.RECEIVING, 0, 10, concat_kind=ConcatKind.PARTIAL)
    assert partial.is_partial and not partial.is_final and not partial.length_deferred
    final = Upload("c" * 16, S.CONCATENATING, 0, None, concat_kind=ConcatKind.FINAL)
    assert final.is_final and not final.is_partial


def test_upload_is_immutable() -> None:
    upload = Upload("a" * 16, S.RECEIVING, 0, 10)
    with pytest.raises(AttributeError):
        upload.offset = 5  # type: ignore[misc]
