"""The S3 multipart calls the minio client has but does not name publicly.

minio 7.2 implements CreateMultipartUpload, UploadPart, UploadPartCopy,
CompleteMultipartUpload, AbortMultipartUpload and ListMultipartUploads, but only as private
methods behind its own put_object/compose_object. Everything that reaches past minio's
public surface lives here, in one place, so that a minio upgrade that moves those methods
breaks exactly one small module (and its tests), nothing else.

These functions block (minio is synchronous); the store runs them in its worker threads.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from minio import Minio

Buffer = bytes | bytearray | memoryview

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(frozen=True, slots=True)
class CompletedPart:
    number: int
    etag: str
    #: base64 SHA-256, when the upload was created with that checksum algorithm
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class OpenUpload:
    """A multipart upload the bucket holds that was neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime | None


def create_multipart_upload(client: Minio, bucket: str, key: str, headers: dict[str, str]) -> str:
    """CreateMultipartUpload; returns the UploadId."""
    return str(client._create_multipart_upload(bucket, key, _headers(headers)))


def put_object(client: Minio, bucket: str, key: str, data: Buffer, headers: dict[str, str]) -> str:
    """PutObject with exactly the caller's checksum headers (minio's public put_object
    wants a stream and adds its own); returns the ETag."""
    body: Any = data  # minio is typed for bytes; any buffer works (urllib3 takes memoryviews)
    return str(client._put_object(bucket, key, body, _headers(headers)).etag)


def upload_part(
    client: Minio,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    data: Buffer,
    headers: dict[str, str],
) -> str:
    """UploadPart with the caller's checksum headers; returns the part's ETag."""
    body: Any = data
    return str(client._upload_part(bucket, key, body, _headers(headers), upload_id, number))


def _headers(headers: dict[str, str]) -> Any:
    return dict(headers)


def upload_part_copy(
    client: Minio,
    bucket: str,
    key: str,
    upload_id: str,
    number: int,
    source_key: str,
    first: int,
    last: int,
) -> tuple[str, str | None]:
    """UploadPartCopy of bytes first..last (inclusive) of another object.

    Returns the part's ETag and, when the upload was created with a checksum algorithm,
    its ChecksumSHA256 (which completion must repeat)."""
    response = client._execute(
        "PUT",
        bucket,
        key,
        headers=_headers(
            {
                "x-amz-copy-source": quote(f"/{bucket}/{source_key}"),
                "x-amz-copy-source-range": f"bytes={first}-{last}",
            }
        ),
        query_params={"partNumber": str(number), "uploadId": upload_id},
    )
    root = ET.fromstring(response.data.decode())
    if _local_name(root.tag) == "Error":
        raise CompleteFailed(_text(root, "Code") or "InternalError", _text(root, "Message") or "")
    return (_text(root, "ETag") or "").strip('"'), _text(root, "ChecksumSHA256")


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def complete_multipart_upload(
    client: Minio, bucket: str, key: str, upload_id: str, parts: Sequence[CompletedPart]
) -> None:
    """CompleteMultipartUpload from our own record of the parts (never from ListParts).

    Built here rather than with minio's helper because that one cannot carry the per-part
    checksums a stricter endpoint requires when the upload was created with an algorithm.
    """
    body = completion_xml(parts)
    from minio.helpers import md5sum_hash

    response = client._execute(
        "POST",
        bucket,
        key,
        body=body,
        headers={"Content-Type": "application/xml", "Content-MD5": str(md5sum_hash(body))},
        query_params={"uploadId": upload_id},
    )
    # S3 may answer 200 and still report an error in the body (a documented quirk)
    text = response.data.decode() if response.data else ""
    if "<Error>" in text:
        error = ET.fromstring(text)
        code = error.findtext("Code") or "InternalError"
        message = error.findtext("Message") or "CompleteMultipartUpload failed"
        raise CompleteFailed(code, message)


def completion_xml(parts: Sequence[CompletedPart]) -> bytes:
    """The CompleteMultipartUpload body: each part's number, ETag and (when recorded) its
    SHA-256, which an upload created with that checksum algorithm must repeat."""
    root = ET.Element("CompleteMultipartUpload")
    for part in parts:
        element = ET.SubElement(root, "Part")
        ET.SubElement(element, "PartNumber").text = str(part.number)
        ET.SubElement(element, "ETag").text = f'"{part.etag}"'
        if part.sha256 is not None:
            ET.SubElement(element, "ChecksumSHA256").text = part.sha256
    return bytes(ET.tostring(root))


class CompleteFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def abort_multipart_upload(client: Minio, bucket: str, key: str, upload_id: str) -> None:
    client._abort_multipart_upload(bucket, key, upload_id)


def list_multipart_uploads(client: Minio, bucket: str, prefix: str) -> Iterator[OpenUpload]:
    """Every open multipart upload under `prefix`, following the listing's pages."""
    key_marker: str | None = None
    upload_id_marker: str | None = None
    while True:
        query: dict[str, Any] = {"uploads": "", "prefix": prefix, "max-uploads": "1000"}
        if key_marker:
            query["key-marker"] = key_marker
        if upload_id_marker:
            query["upload-id-marker"] = upload_id_marker
        response = client._execute("GET", bucket, query_params=query)
        root = ET.fromstring(response.data.decode())
        for element in _children(root, "Upload"):
            initiated = _text(element, "Initiated")
            yield OpenUpload(
                key=_text(element, "Key") or "",
                upload_id=_text(element, "UploadId") or "",
                initiated=_parse_time(initiated) if initiated else None,
            )
        if (_text(root, "IsTruncated") or "").lower() != "true":
            return
        key_marker = _text(root, "NextKeyMarker")
        upload_id_marker = _text(root, "NextUploadIdMarker")
        if not key_marker and not upload_id_marker:
            return


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return element.findall(S3_NS + name) or element.findall(name)


def _text(element: ET.Element, name: str) -> str | None:
    found = element.find(S3_NS + name)
    if found is None:
        found = element.find(name)
    return None if found is None else found.text


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
