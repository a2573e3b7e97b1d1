"""Settings: everything the server is told at start, in one immutable object."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from tusd_protocol.decisions import Limits
from tusd_storage import FsyncPolicy


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    data_dir: Path = Path("./tusd-data")
    #: SQLAlchemy URL; None = SQLite at <data_dir>/tusd.db
    database_url: str | None = None
    #: bytes; 0 = no limit
    max_size: int = 0
    #: seconds an idle unfinished upload lives; 0 = forever
    expiration: float = 86400
    cors_origins: tuple[str, ...] = ("*",)
    #: let browsers send cookies and HTTP auth (Access-Control-Allow-Credentials): only with
    #: an explicit origin list, never with "*" (any web page could act as the user)
    cors_allow_credentials: bool = False
    behind_proxy: bool = False
    log_level: str = "info"
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    #: how long a request waits for an upload another request holds before answering 423
    lock_acquire_timeout: float = 20.0
    #: how long a holder gets to let go after being asked
    lock_handover_timeout: float = 3.0
    #: uploads whose state the in-process cache keeps
    cache_entries: int = 100_000
    #: "file" (a directory under data_dir) or "s3://BUCKET/PREFIX"
    storage: str = "file"
    #: host[:port] of the S3 endpoint (a URL with http:// or https:// also sets s3_secure)
    s3_endpoint: str = "s3.amazonaws.com"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = True
    s3_create_bucket: bool = False
    #: preferred part size; grown per upload so that a known length needs <= 10,000 parts
    s3_part_size: int = 8 * 1024 * 1024
    #: part uploads in flight at once in this process (each holds one part in memory)
    s3_max_concurrent_parts: int = 16
    #: Redis for the shared state cache and the locks of several instances (None: one process)
    redis_url: str | None = None
    #: server processes on this host (more than one needs Redis)
    workers: int = 1
    #: state database connections kept per process, extra ones allowed, seconds to wait for one
    db_pool_size: int = 20
    db_max_overflow: int = 30
    db_pool_timeout: float = 5.0
    #: Redis connections per process (requests wait up to db_pool_timeout for one)
    redis_pool_size: int = 200
    #: seconds a cached upload state lives in Redis
    cache_ttl: float = 3600.0

    def __post_init__(self) -> None:
        base = "/" + self.base_path.strip("/") + "/"
        object.__setattr__(self, "base_path", "/" if base == "//" else base)
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        endpoint = self.s3_endpoint
        for scheme, secure in (("https://", True), ("http://", False)):
            if endpoint.startswith(scheme):
                object.__setattr__(self, "s3_endpoint", endpoint[len(scheme) :].rstrip("/"))
                object.__setattr__(self, "s3_secure", secure)
        if self.storage != "file" and not self.storage.startswith("s3://"):
            raise ValueError(f"storage must be 'file' or s3://BUCKET/PREFIX, not {self.storage!r}")
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "--cors-allow-credentials needs an explicit --cors-origins list: with '*' any "
                "web page a signed-in user visits could send requests in that user's name"
            )
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"--workers {self.workers} needs --redis-url: several processes must share "
                "one lock per upload, and only Redis gives them one"
            )

    @property
    def uses_s3(self) -> bool:
        return self.storage.startswith("s3://")

    @property
    def limits(self) -> Limits:
        return Limits(
            max_size=self.max_size or None,
            expiration=timedelta(seconds=self.expiration) if self.expiration > 0 else None,
        )

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def resolved_database_url(self) -> str:
        return normalize_database_url(
            self.database_url or f"sqlite:///{(self.data_dir / 'tusd.db').resolve()}"
        )

    @property
    def sweep_interval(self) -> float:
        """Expired uploads are reclaimed within a quarter of their lifetime (0.5 s .. 60 s)."""
        if self.expiration <= 0:
            return 60.0
        return min(60.0, max(0.5, self.expiration / 4))


def normalize_database_url(url: str) -> str:
    """Accept plain postgresql:// and sqlite:// URLs; use the async drivers we ship."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def sync_database_url(url: str) -> str:
    """The same database through a synchronous driver (Alembic runs synchronously)."""
    url = normalize_database_url(url)
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


#: where `serve --workers N` hands its settings to the worker processes
SETTINGS_ENVIRONMENT = "TUSD__SETTINGS_JSON"


def settings_to_json(settings: Settings) -> str:
    return json.dumps(dataclasses.asdict(settings), default=str)


def settings_from_environment() -> Settings:
    raw = json.loads(os.environ[SETTINGS_ENVIRONMENT])
    raw["cors_origins"] = tuple(raw["cors_origins"])
    raw["fsync"] = FsyncPolicy(raw["fsync"])
    return Settings(**raw)
