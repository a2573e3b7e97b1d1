"""What a hook's answer may say, read strictly (tusd_py.events.payload.read_answer)."""

from __future__ import annotations

from typing import Any

import pytest

from tusd_py.core.hooks import HookAnswer, HookFailed, HookPoint, HookRejected
from tusd_py.events.payload import read_answer

CREATE = HookPoint.PRE_CREATE
ACCESS = HookPoint.PRE_ACCESS


@pytest.mark.parametrize("raw", [None, {}, {"reject": False}, {"reject": None}])
def test_an_empty_answer_changes_nothing(raw: object) -> None:
    assert read_answer(CREATE, raw, "test") == HookAnswer()


def test_an_answer_changes_what_its_point_allows() -> None:
    assert read_answer(ACCESS, {"subject": "alice"}, "t") == HookAnswer(subject="alice")
    answer = read_answer(CREATE, {"metadata": {"a": "1", "b": None}, "id": "x" * 20}, "t")
    assert answer == HookAnswer(metadata={"a": "1", "b": None}, upload_id="x" * 20)


@pytest.mark.parametrize(
    ("reject", "status", "code", "message", "headers"),
    [
        (True, 403, "ERR_HOOK_REJECTED", "The request was refused.", {}),
        ({"status": 451}, 451, "ERR_HOOK_REJECTED", "The request was refused.", {}),
        (
            {"status": 401, "message": "Sign in.", "code": "ERR_SIGN_IN",
             "headers": {"WWW-Authenticate": "Bearer"}},
            401, "ERR_SIGN_IN", "Sign in.", {"WWW-Authenticate": "Bearer"},
        ),
    ],
)  # fmt: skip
def test_a_rejection_carries_its_status_code_message_and_headers(
    reject: object, status: int, code: str, message: str, headers: dict[str, str]
) -> None:
    with pytest.raises(HookRejected) as raised:
        read_answer(CREATE, {"reject": reject}, "t")
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        status,
        code,
        message,
    )
    assert raised.value.headers == headers


@pytest.mark.parametrize(
    ("point", "raw"),
    [
        (CREATE, "yes"),  # not an object
        (CREATE, {"subject": "x"}),  # not this point's to change
        (ACCESS, {"metadata": {}}),
        (HookPoint.PRE_TERMINATE, {"id": "x" * 20}),
        (CREATE, {"reject": "no"}),
        (CREATE, {"reject": {"status": 200}}),  # not a refusal
        (CREATE, {"reject": {"status": 600}}),
        (CREATE, {"reject": {"status": True}}),
        (CREATE, {"reject": {"code": "bad code!"}}),
        (CREATE, {"reject": {"headers": {"X-A": "1\r\nSet-Cookie: a=b"}}}),  # header injection
        (ACCESS, {"subject": ""}),
        (ACCESS, {"subject": "x" * 257}),
        (ACCESS, {"subject": 7}),
        (CREATE, {"metadata": {"a b": "1"}}),  # a key with a space
        (CREATE, {"metadata": {"a": 1}}),
        (CREATE, {"metadata": ["a"]}),
        (CREATE, {"id": "short"}),
        (CREATE, {"id": "../../etc/passwd/xxxxxxxx"}),
    ],
)
def test_an_answer_the_server_cannot_use_fails_the_hook(point: HookPoint, raw: Any) -> None:
    with pytest.raises(HookFailed) as raised:
        read_answer(point, raw, "hooks.py")
    assert raised.value.status == 500 and raised.value.code == "ERR_HOOK_FAILED"
    assert "hooks.py" in raised.value.detail  # for the log; the client gets a plain sentence
    assert "hooks.py" not in raised.value.message
