"""tus 1.0.0 without I/O: header codecs, errors, the upload state machine and its decisions."""

from . import checksums, decisions, errors, headers, state
from .errors import ProtocolError
from .state import ConcatKind, Upload, UploadStatus

__all__ = [
    "ConcatKind",
    "ProtocolError",
    "Upload",
    "UploadStatus",
    "checksums",
    "decisions",
    "errors",
    "headers",
    "state",
]
