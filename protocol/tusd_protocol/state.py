"""The upload state machine, as data.

An upload is a record; its `status` moves only along TRANSITIONS. The storage and HTTP
layers ask `check_transition` before every write, so an impossible move is a bug we see,
not a corrupted upload.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from .errors import ServerFault


class UploadStatus(enum.StrEnum):
    #: accepting bytes: offset < length, or length not yet known
    RECEIVING = "receiving"
    #: a final upload waiting for its partial uploads to finish before it is assembled
    CONCATENATING = "concatenating"
    #: every byte is stored: offset == length
    FINISHED = "finished"
    #: removed by DELETE; remembered so that later requests answer 410
    TERMINATED = "terminated"
    #: removed by the expiry sweeper; remembered so that later requests answer 410
    EXPIRED = "expired"
    #: complete, but refused by the application (a pre-finish hook): its bytes are removed,
    #: and later requests answer 410
    FAILED = "failed"


class ConcatKind(enum.StrEnum):
    NONE = "none"
    PARTIAL = "partial"
    FINAL = "final"


TRANSITIONS: dict[UploadStatus, frozenset[UploadStatus]] = {
    UploadStatus.RECEIVING: frozenset(
        {
            UploadStatus.RECEIVING,
            UploadStatus.FINISHED,
            UploadStatus.TERMINATED,
            UploadStatus.EXPIRED,
            UploadStatus.FAILED,
        }
    ),
    UploadStatus.CONCATENATING: frozenset(
        {UploadStatus.FINISHED, UploadStatus.TERMINATED, UploadStatus.EXPIRED}
    ),
    UploadStatus.FINISHED: frozenset({UploadStatus.TERMINATED}),
    UploadStatus.TERMINATED: frozenset(),
    UploadStatus.EXPIRED: frozenset(),
    UploadStatus.FAILED: frozenset(),
}

#: statuses a new upload may start in
INITIAL_STATUSES = frozenset(
    {UploadStatus.RECEIVING, UploadStatus.CONCATENATING, UploadStatus.FINISHED}
)

#: statuses whose bytes are gone; requests for them answer 410
GONE_STATUSES = frozenset({UploadStatus.TERMINATED, UploadStatus.EXPIRED, UploadStatus.FAILED})


def can_transition(old: UploadStatus, new: UploadStatus) -> bool:
    return new in TRANSITIONS[old]


def check_transition(old: UploadStatus, new: UploadStatus) -> None:
    if not can_transition(old, new):
        raise ServerFault(f"Refusing the impossible transition {old} -> {new}.")


@dataclass(frozen=True, slots=True)
class Upload:
    """What the protocol needs to know of a stored upload."""

    id: str
    status: UploadStatus
    offset: int
    length: int | None
    metadata_header: str | None = None
    concat_kind: ConcatKind = ConcatKind.NONE
    #: Upload-Concat exactly as the client sent it (echoed on HEAD)
    concat_header: str | None = None
    expires_at: datetime | None = None
    version: int = 0
    #: who created it, as a pre-access hook named the caller; None: anyone may use it
    owner: str | None = None

    @property
    def length_deferred(self) -> bool:
        return self.length is None

    @property
    def is_final(self) -> bool:
        return self.concat_kind is ConcatKind.FINAL

    @property
    def is_partial(self) -> bool:
        return self.concat_kind is ConcatKind.PARTIAL
