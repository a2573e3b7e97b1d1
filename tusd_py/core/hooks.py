"""Hooks as the upload service sees them: where they are called, what they are told, and what
their answer may change. How a hook is delivered (a Python function, a webhook) is the
events package's business; the service only calls the Hooks port.

Blocking hooks (pre-*) decide the client's answer: a rejection becomes the client's status
and message, and a hook that fails (raises, times out, cannot be reached, answers nonsense)
is a 5xx with a stable code, never ignored.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tusd_protocol.errors import ProtocolError, ServerFault


class HookPoint(enum.StrEnum):
    #: every request to an upload or the collection (not OPTIONS); may reject, and may
    #: name the caller (subject), who then owns what it creates
    PRE_ACCESS = "pre-access"
    #: before an upload is created; may reject, change its metadata or choose its id
    PRE_CREATE = "pre-create"
    #: before an upload is terminated; may reject
    PRE_TERMINATE = "pre-terminate"
    #: when the last byte of an upload arrived, before it is recorded as finished; may
    #: reject: the upload then ends failed (its bytes removed) and the client gets the
    #: hook's status and message
    PRE_FINISH = "pre-finish"
    #: an upload was created (notifying: delivered at least once, after the commit)
    POST_CREATE = "post-create"
    #: bytes are arriving: how far an upload got, at most once per --hooks-progress-interval
    #: per upload (best effort: told once, never stored or retried)
    POST_RECEIVE = "post-receive"
    #: every byte of an upload is stored (notifying)
    POST_FINISH = "post-finish"
    #: an upload was terminated (notifying)
    POST_TERMINATE = "post-terminate"


#: the points whose events are kept in the outbox and delivered after the change commits;
#: post-receive is told as it happens; the others are blocking: called before the change,
#: and their answer decides
NOTIFYING = frozenset({HookPoint.POST_CREATE, HookPoint.POST_FINISH, HookPoint.POST_TERMINATE})


@dataclass(frozen=True)
class Caller:
    """The request a hook is called for, and who sent it (once pre-access said so)."""

    method: str
    uri: str
    remote_address: str | None = None
    #: the request's headers, names in lower case
    headers: Mapping[str, str] = field(default_factory=dict)
    #: who the caller is, as pre-access named it (None: no pre-access hook, or it did not say)
    subject: str | None = None
    #: an operator (the command line): every upload is theirs to end, and no blocking hook
    #: is asked
    operator: bool = False


#: a caller nobody named (no pre-access hook): uploads with an owner do not exist for it;
#: also the caller of what the server does by itself (its events carry an empty request)
ANONYMOUS = Caller(method="", uri="")
#: an operator at the command line (`tusd-py uploads delete`)
OPERATOR = Caller(method="", uri="", operator=True)


@dataclass(frozen=True)
class HookUpload:
    """What a hook is told about the upload (None where not known yet)."""

    id: str | None
    offset: int = 0
    length: int | None = None
    metadata: Mapping[str, str | None] = field(default_factory=dict)
    owner: str | None = None
    #: "none", "partial" or "final"
    concat: str = "none"
    #: the partial ids a final upload is made of
    partials: tuple[str, ...] = ()
    #: where the store keeps the bytes (Store.location); None before the upload exists
    storage: Mapping[str, str] | None = None


@dataclass(frozen=True)
class HookAnswer:
    """What a blocking hook may change; each field None where it changes nothing."""

    #: pre-access: who the caller is
    subject: str | None = None
    #: pre-create: the metadata the upload gets instead of the client's
    metadata: Mapping[str, str | None] | None = None
    #: pre-create: the id the upload gets instead of a random one
    upload_id: str | None = None


ACCEPTED = HookAnswer()


#: request headers that carry credentials: a notifying event, which is stored in the outbox
#: and may go to other machines, leaves them out (the caller's subject says who it was)
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def make_event(point: HookPoint, upload: HookUpload, caller: Caller) -> dict[str, Any]:
    """The event a hook gets, as JSON-ready data (docs/hooks.md); its id lets a consumer
    drop a duplicate."""
    headers = dict(caller.headers)
    if point in NOTIFYING or point is HookPoint.POST_RECEIVE:
        headers = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
    return {
        "id": uuid.uuid4().hex,
        "type": point.value,
        "time": datetime.now(UTC).isoformat(),
        "upload": {
            "id": upload.id,
            "offset": upload.offset,
            "length": upload.length,
            "metadata": dict(upload.metadata),
            "owner": upload.owner,
            "concat": upload.concat,
            "partials": list(upload.partials),
            "storage": None if upload.storage is None else dict(upload.storage),
        },
        "request": {
            "method": caller.method,
            "uri": caller.uri,
            "remote_address": caller.remote_address,
            "headers": headers,
            "subject": caller.subject,
        },
    }


class Hooks(Protocol):
    def enabled(self, point: HookPoint) -> bool:
        """Whether anything listens at this point (when nothing does, the service builds no
        payload and waits for nothing)."""

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        """Call a blocking hook; raises HookRejected or HookFailed."""

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        """Deliver a notifying event (the outbox relay calls this); raises HookFailed when
        a delivery did not take it, so that it is tried again."""

    async def close(self) -> None:
        """Let go of connections (at shutdown)."""


class NoHooks:
    def enabled(self, point: HookPoint) -> bool:
        return False

    async def call(self, point: HookPoint, upload: HookUpload, caller: Caller) -> HookAnswer:
        return ACCEPTED

    async def deliver(self, point: HookPoint, event: Mapping[str, Any]) -> None:
        pass

    async def close(self) -> None:
        pass


NO_HOOKS = NoHooks()


class HookRejected(ProtocolError):
    """A hook said no: the client gets the hook's status (400-599) and message."""

    code = "ERR_HOOK_REJECTED"
    default_message = "The request was refused."

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status  # type: ignore[misc]  # the hook's, not the class's
        if code:
            self.code = code  # type: ignore[misc]


class HookFailed(ServerFault):
    """A blocking hook could not decide: it raised, timed out, could not be reached or
    answered something that is not an answer. Our side (the server's configuration)."""

    status = 500
    code = "ERR_HOOK_FAILED"
    default_message = "A hook the server depends on failed; the request changed nothing."

    def __init__(self, detail: str) -> None:
        # the client gets the plain sentence; what went wrong (a hook's name, its URL, an
        # exception's text) is for the server's log and the outbox, not for any caller
        super().__init__()
        self.detail = detail
