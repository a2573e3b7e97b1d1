"""The server's hooks: `tusd-py serve --hooks-module csv_ingest.hooks` (with this directory
on PYTHONPATH).

pre-create refuses, before any byte is sent, what cannot become an accepted CSV file: a
name that does not end in .csv, an upload of unknown length (the size limit could not be
checked up front) and one larger than CSV_INGEST_MAX_BYTES (default 1 GiB). Whether the
bytes really are a CSV file is the worker's to find out, once they are all there.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_MAX_BYTES = 1 << 30


def max_bytes() -> int:
    return int(os.environ.get("CSV_INGEST_MAX_BYTES", DEFAULT_MAX_BYTES))


def pre_create(event: dict[str, Any]) -> dict[str, Any] | None:
    upload = event["upload"]
    if upload["concat"] == "partial":
        # a piece of a parallel upload (tus-js-client's parallelUploads) carries no name;
        # the final upload that joins the pieces is checked like any other
        return _size_check(upload["length"])
    name = upload["metadata"].get("filename") or ""
    if not name.lower().endswith(".csv"):
        return reject(
            415, "ERR_NOT_CSV", "Only CSV files are taken: the file name must end in .csv."
        )
    return _size_check(upload["length"])


def _size_check(length: int | None) -> dict[str, Any] | None:
    if length is None:
        return reject(411, "ERR_LENGTH_REQUIRED", "Say the file's size when the upload begins.")
    if length > max_bytes():
        return reject(
            413, "ERR_CSV_TOO_LARGE", f"CSV files of up to {max_bytes()} bytes are taken."
        )
    return None


def reject(status: int, code: str, message: str) -> dict[str, Any]:
    return {"reject": {"status": status, "code": code, "message": message}}
