"""Resumable uploads without I/O: header codecs, errors, the upload state machine, the
dialect-neutral commands and the rules over them, and the wire dialects (tus 1.0.0)."""

from . import checksums, commands, download, errors, headers, rules, state
from .errors import ProtocolError
from .state import ConcatKind, Upload, UploadStatus

__all__ = [
    "ConcatKind",
    "ProtocolError",
    "Upload",
    "UploadStatus",
    "checksums",
    "commands",
    "download",
    "errors",
    "headers",
    "rules",
    "state",
]
