"""Where tusd-py keeps upload bytes: a directory (FileStore), S3/MinIO, or memory (tests)."""

from .base import Appender, Capability, StorageError, Store
from .file import FileStore, FsyncPolicy
from .memory import MemoryStore

__all__ = [
    "Appender",
    "Capability",
    "FileStore",
    "FsyncPolicy",
    "MemoryStore",
    "StorageError",
    "Store",
]
