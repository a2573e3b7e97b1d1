"""Where tusd-py keeps upload bytes: a directory (FileStore), S3/MinIO, or memory (tests)."""

from .base import (
    EMPTY_LAYOUT,
    Appender,
    Capability,
    Fragment,
    Layout,
    LiveUploads,
    Part,
    Source,
    StorageError,
    Store,
    Stored,
)
from .file import FileStore, FsyncPolicy
from .file_calls import FileIoMode
from .memory import MemoryStore

__all__ = [
    "EMPTY_LAYOUT",
    "Appender",
    "Capability",
    "FileIoMode",
    "FileStore",
    "Fragment",
    "FsyncPolicy",
    "Layout",
    "LiveUploads",
    "MemoryStore",
    "Part",
    "Source",
    "StorageError",
    "Store",
    "Stored",
]
