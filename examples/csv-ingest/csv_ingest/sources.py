"""Opening a finished upload where the store keeps it, as the event's `upload.storage` says:
a file of the file store, or an object of the S3 store. Either way the caller gets a binary
stream that reads a buffer at a time, never the whole upload."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def from_environment(cls) -> S3Credentials | None:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the server's own TUSD_S3_* names."""
        access = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("TUSD_S3_ACCESS_KEY")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("TUSD_S3_SECRET_KEY")
        return cls(access, secret) if access and secret else None


class UnknownStorage(Exception):
    """The event names a place this worker cannot read."""


@contextmanager
def open_upload(
    storage: Mapping[str, str] | None, credentials: S3Credentials | None = None
) -> Iterator[BinaryIO]:
    kind = (storage or {}).get("type")
    if storage is None or kind is None:
        raise UnknownStorage("the event does not say where the upload is stored")
    if kind == "file":
        with open(storage["path"], "rb", buffering=READ_BUFFER) as file:
            yield file
        return
    if kind == "s3":
        with _s3_object(storage, credentials) as stream:
            yield stream
        return
    raise UnknownStorage(f"this worker cannot read uploads stored in {kind!r}")


@contextmanager
def _s3_object(storage: Mapping[str, str], credentials: S3Credentials | None) -> Iterator[BinaryIO]:
    from minio import Minio

    if credentials is None:
        raise UnknownStorage("the upload is in S3 and this worker has no S3 credentials")
    endpoint = urlsplit(storage["endpoint"])
    client = Minio(
        endpoint.netloc,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        region=storage.get("region"),
        secure=endpoint.scheme == "https",
    )
    # the body streams from the socket as it is read (urllib3, preload_content off)
    response = client.get_object(storage["bucket"], storage["key"])
    try:
        yield io.BufferedReader(_Body(response), READ_BUFFER)
    finally:
        response.close()
        response.release_conn()


class _Body(io.RawIOBase):
    """An S3 object's body as a raw stream. urllib3's response is one too, but it reports
    itself closed as soon as its last byte is read, and a BufferedReader on it then raises
    instead of reading the end of the file."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
