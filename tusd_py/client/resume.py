"""The resume store: which upload URL holds which local file, so that a second run (after
Ctrl-C, a lost network or a killed process) continues the first one's upload.

A file is known by a fingerprint of its absolute path, size, modification time and the
SHA-256 of its first and last MiB: a changed file is a new upload. Entries live in a
SQLite file in the user's cache directory (`$XDG_CACHE_HOME/tusd-py/uploads.sqlite3`,
`~/.cache/...` by default), one per (fingerprint, creation URL); a parallel upload keeps its
partials' URLs too. An entry is removed when its upload finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

EDGE = 1024 * 1024


def default_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "tusd-py" / "uploads.sqlite3"


def fingerprint(path: str | os.PathLike[str]) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    with open(path, "rb") as file:
        digest.update(hashlib.sha256(file.read(EDGE)).digest())
        file.seek(max(0, stat.st_size - EDGE))
        digest.update(hashlib.sha256(file.read(EDGE)).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    #: the upload's URL (a parallel upload's final URL, once created)
    url: str | None
    #: a parallel upload's partial URLs, by piece (None: not created yet)
    partials: tuple[str | None, ...] = ()


class ResumeStore:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS uploads (fingerprint TEXT NOT NULL, "
                "endpoint TEXT NOT NULL, url TEXT, partials TEXT NOT NULL, "
                "saved_at REAL NOT NULL, PRIMARY KEY (fingerprint, endpoint))"
            )

    def _connect(self) -> sqlite3.Connection:
        # several uploads (processes or threads) may write at once: wait for each other
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def find(self, key: str, endpoint: str) -> Entry | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT url, partials FROM uploads WHERE fingerprint = ? AND endpoint = ?",
                (key, endpoint),
            ).fetchone()
        if row is None:
            return None
        return Entry(row[0], tuple(json.loads(row[1])))

    def save(self, key: str, endpoint: str, entry: Entry) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)",
                (key, endpoint, entry.url, json.dumps(list(entry.partials)), time.time()),
            )

    def forget(self, key: str, endpoint: str) -> None:
        with self._connect() as db:
            db.execute(
                "DELETE FROM uploads WHERE fingerprint = ? AND endpoint = ?", (key, endpoint)
            )
