"""Stored uploads and moments the protocol tests share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tusd_protocol.rules import Limits
from tusd_protocol.state import ConcatKind, Upload, UploadStatus

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ID = "abcdefghijklmnop0123"
NO_LIMITS = Limits()
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
