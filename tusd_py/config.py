"""Settings: everything the server is told at start, in one immutable object.

Each option is declared once, as a field of `Settings` whose metadata says how to read it
from text, its help sentence and which commands take it. From those declarations come the
command line (tusd_py.cli), the environment variables TUSD_<NAME>, the settings handed to
worker processes (settings_to_json / settings_from_environment) and the options tables of
docs/configuration.md (`uv run python -m tusd_py.config --write-docs`).

A parser takes text (command line, environment) or a Python value (Settings built in code,
JSON) and returns the value, or raises ValueError with a sentence; the sentence is the same
whichever way the value came.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from tusd_protocol.rules import Limits
from tusd_storage import FileIoMode, FsyncPolicy

from .core.hooks import HookPoint

T = TypeVar("T")

# --- the commands that take options -------------------------------------------------------

SERVE = "serve"
MIGRATE = "migrate"
GC = "gc"
EVENTS = "events"
UPLOADS = "uploads"
COMMANDS = (SERVE, MIGRATE, GC, EVENTS, UPLOADS)
#: the commands that reach the upload store (migrate reaches only the database)
STORE = (SERVE, GC, UPLOADS)

# --- parsers: text or a Python value in, the value out (or ValueError with a sentence) -----

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}")


def text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value


def optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    """None (or empty text) means: not set."""

    def parse_optional(value: object) -> T | None:
        if value is None or value == "":
            return None
        return parse(value)

    return parse_optional


def _whole_number(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("must be a whole number")


def whole_number(minimum: int = 0, maximum: int | None = None) -> Callable[[object], int]:
    def parse_whole_number(value: object) -> int:
        number = _whole_number(value)
        if number < minimum:
            raise ValueError(
                "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            )
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}")
        return number

    return parse_whole_number


non_negative_int = whole_number(0)
positive_int = whole_number(1)


def tcp_port(value: object) -> int:
    number = _whole_number(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a TCP port number, from 0 to 65535")
    return number


def redis_pool_size(value: object) -> int:
    number = _whole_number(value)
    if number < 2:
        raise ValueError("must be at least 2 (the handover listener keeps one)")
    return number


def s3_part_size(value: object) -> int:
    number = _whole_number(value)
    if number < 5 * 1024 * 1024:
        raise ValueError("S3 parts must be at least 5 MiB (5242880 bytes)")
    if number > 5 * 1024 * 1024 * 1024:
        raise ValueError("S3 parts must be at most 5 GiB (5368709120 bytes)")
    return number


def seconds(value: object) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ValueError("must be a number of seconds")
    if number < 0:
        raise ValueError("must not be negative")
    return number


def non_negative_number(value: object) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ValueError("must be a number")
    if number < 0:
        raise ValueError("must not be negative")
    return number


class OneOf:
    """One of a few words (case-insensitive); with an enum, its members' values."""

    def __init__(self, choices: Iterable[str], convert: Callable[[str], Any] = str) -> None:
        self.choices = tuple(choices)
        self.convert = convert

    def __call__(self, value: object) -> Any:
        if isinstance(value, str) and value.strip().lower() in self.choices:
            return self.convert(value.strip().lower())
        raise ValueError(f"must be one of {', '.join(self.choices)}")


def one_of_enum(kind: type[enum.StrEnum]) -> OneOf:
    return OneOf([member.value for member in kind], kind)


def directory(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value:
        return Path(value)
    raise ValueError("must be a directory path")


def url_path(value: object) -> str:
    """`files`, `/files` and `/files/` are all `/files/`."""
    base = "/" + text(value).strip("/") + "/"
    return "/" if base == "//" else base


def _items(value: object, what: str) -> tuple[str, ...]:
    """Comma-separated text, or a sequence: its non-empty items, stripped."""
    if isinstance(value, str):
        items: Iterable[object] = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ValueError(f"must be a comma-separated list of {what}")
    return tuple(text(item).strip() for item in items if text(item).strip())


def origin_list(value: object) -> tuple[str, ...]:
    """Comma-separated text, or a sequence of origins."""
    return _items(value, "origins, or *")


def header_names(value: object) -> tuple[str, ...]:
    """Comma-separated HTTP header names (or a sequence of them), in lower case."""
    names = tuple(name.lower() for name in _items(value, "header names"))
    for name in names:
        if not name.replace("-", "").isalnum():
            raise ValueError(f"{name!r} is not a header name")
    return names


def hook_points(value: object) -> tuple[str, ...]:
    """Comma-separated hook points (pre-create, ...), or a sequence of them."""
    known = [point.value for point in HookPoint]
    points = tuple(point.lower() for point in _items(value, "hook points"))
    for point in points:
        if point not in known:
            raise ValueError(f"{point!r} is not a hook point; they are {', '.join(known)}")
    return points


def web_url(value: object) -> str:
    url = text(value)
    if not (url.startswith("http://") or url.startswith("https://")):
        raise ValueError("must be an http:// or https:// URL")
    return url


def storage_location(value: object) -> str:
    location = text(value)
    if location != "file" and not location.startswith("s3://"):
        raise ValueError("must be 'file' or s3://BUCKET/PREFIX")
    return location


# --- the declaration of one option ----------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """What the command line, the environment and the docs know about one Settings field."""

    #: the Settings field
    name: str
    default: Any
    parse: Callable[[object], Any]
    #: one sentence for --help and the docs (may hold `code` marks)
    help: str
    #: more sentences for the docs only (markdown)
    doc: str
    commands: tuple[str, ...]
    #: what --help and the docs say about the default, when its plain value says too little
    shown_default: str | None = None
    metavar: str | None = None
    #: further command-line names
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "TUSD_" + self.name.upper()

    @property
    def is_switch(self) -> bool:
        """On or off: `--x` / `--no-x` on the command line."""
        return self.parse is boolean

    @property
    def choices(self) -> tuple[str, ...]:
        return self.parse.choices if isinstance(self.parse, OneOf) else ()

    @property
    def default_text(self) -> str:
        """The default as the docs show it (markdown)."""
        if self.shown_default is not None:
            return self.shown_default
        value = self.default
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, tuple):
            value = ",".join(value)
        if isinstance(value, enum.Enum):
            value = value.value
        return f"`{value}`"

    def parse_environment(self, raw: str) -> Any:
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise EnvironmentValueError(f"{self.env}={raw!r}: {exc}") from None


def option(
    default: T,
    *,
    parse: Callable[[object], T],
    help: str,
    commands: Iterable[str],
    doc: str = "",
    shown_default: str | None = None,
    metavar: str | None = None,
    aliases: Sequence[str] = (),
) -> T:
    """A Settings field that is also an option (see Option)."""
    declared = Option(
        name="",  # the field's name, filled in by _options()
        default=default,
        parse=parse,
        help=help,
        doc=doc,
        commands=tuple(commands),
        shown_default=shown_default,
        metavar=metavar,
        aliases=tuple(aliases),
    )
    return cast(T, field(default=default, metadata={"option": declared}))


class EnvironmentValueError(ValueError):
    """A TUSD_<NAME> variable holds a value its option refuses."""


# --- the settings ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Settings:
    # where the server listens and how it shows itself
    host: str = option(
        "127.0.0.1",
        parse=text,
        metavar="ADDRESS",
        commands=[SERVE],
        help="Address to listen on; `0.0.0.0` accepts connections from other machines.",
    )
    port: int = option(
        1080, parse=tcp_port, metavar="PORT", commands=[SERVE], help="TCP port to listen on."
    )
    base_path: str = option(
        "/files/",
        parse=url_path,
        metavar="PATH",
        commands=[SERVE],
        help="URL path of the creation endpoint; uploads live at `<base-path><id>`.",
        doc="A trailing slash is added if missing; POST to the path without it works too.",
    )
    behind_proxy: bool = option(
        False,
        parse=boolean,
        commands=[SERVE],
        help="Build upload URLs from `Forwarded` or `X-Forwarded-Proto` / `X-Forwarded-Host`; "
        "turn it on only behind a proxy that sets these headers.",
        doc="Otherwise clients could make the server hand out URLs to other hosts.",
    )
    cors_origins: tuple[str, ...] = option(
        ("*",),
        parse=origin_list,
        metavar="ORIGINS",
        commands=[SERVE],
        help="Comma-separated browser origins allowed to use the server "
        "(`https://app.example.com,https://admin.example.com`), or `*` for any.",
        doc="With `*` any page may upload, without cookies or HTTP authentication "
        "(`Access-Control-Allow-Origin: *`); a listed origin is echoed back.",
    )
    cors_allow_credentials: bool = option(
        False,
        parse=boolean,
        commands=[SERVE],
        help="Let pages from the listed `--cors-origins` send cookies and HTTP authentication "
        "(`Access-Control-Allow-Credentials: true`); refused with `*`.",
        doc="With `*`, any web page a signed-in user visits could send requests in that "
        "user's name.",
    )
    demo: bool = option(
        False,
        parse=boolean,
        commands=[SERVE],
        help="Serve a browser upload page (Uppy) at `/` that uploads to this server, with a "
        "download link for each finished upload.",
        doc="For trying the server out: the page needs no network beyond this server (its "
        "files ship with tusd-py, under `/demo/`). Needs a `--base-path` other than `/` and "
        "`/demo/`, whose URLs the page and its files would take.",
    )

    # what an upload may be
    max_size: int = option(
        0,
        parse=non_negative_int,
        metavar="BYTES",
        commands=[SERVE],
        help="Largest upload in bytes; `0` means no limit.",
        doc="Advertised as `Tus-Max-Size`; a larger `Upload-Length` answers 413, and an upload "
        "with deferred length may not grow past it. With S3 storage, at most 5 TiB "
        "(5497558138880), which is also the value used for `0`.",
    )
    expiration: float = option(
        86400.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds an unfinished upload may sit idle before it expires and its bytes are "
        "reclaimed; `0` means never.",
        doc="Every PATCH moves the deadline. Expired uploads answer 410 and their bytes are "
        "removed by a background sweep (every quarter of this time, between 0.5 s and 60 s). "
        "With `0` uploads never expire, and then no background sweep runs. Finished uploads "
        "never expire. With S3 storage the same sweep retries assemblies that failed.",
    )

    # where the bytes live
    # (`option` is a field specifier, like dataclasses.field: its value is not shared state)
    data_dir: Path = option(  # noqa: RUF009
        Path("./tusd-data"),
        parse=directory,
        metavar="DIR",
        shown_default="`./tusd-data`",
        commands=COMMANDS,
        help="Directory for upload bytes (`uploads/<id>`, with `--storage file`) and the "
        "embedded SQLite database (`tusd.db`).",
        doc="Created if missing.",
    )
    storage: str = option(
        "file",
        parse=storage_location,
        metavar="LOCATION",
        commands=STORE,
        help="Where upload bytes live: `file` (`<data-dir>/uploads/`) or `s3://BUCKET/PREFIX` "
        "(an S3 or MinIO bucket).",
        doc="See [storage.md](storage.md).",
    )
    fsync: FsyncPolicy = option(  # noqa: RUF009
        FsyncPolicy.ALWAYS,
        parse=one_of_enum(FsyncPolicy),
        commands=[SERVE],
        help="When the file store flushes to disk: `always` before every acknowledgement "
        "(a 204 survives a power loss), or `never` (left to the kernel: a 204 survives a crash "
        "of the server, not of the machine).",
        doc="S3 storage does not use it.",
    )
    file_io: FileIoMode = option(  # noqa: RUF009
        FileIoMode.AUTO,
        parse=one_of_enum(FileIoMode),
        commands=[SERVE],
        help="Where the file store's writes and flushes run: `auto` by the file system (tmpfs: "
        "both on the event loop; a local disk: writes on the event loop, flushes in worker "
        "threads; NFS, FUSE or unknown: both in threads), `inline` always on the event loop, "
        "`threads` always in worker threads.",
        doc="With `auto`, an event-loop call that takes 100 ms moves its kind of call to "
        "threads for 30 s (longer while it stays slow). S3 storage does not use it.",
    )
    s3_endpoint: str = option(
        "s3.amazonaws.com",
        parse=text,
        metavar="HOST[:PORT]",
        commands=STORE,
        help="S3 endpoint as `host[:port]`, or a URL: `http://` means no TLS, `https://` means "
        "TLS, whatever `--s3-secure` says.",
    )
    s3_region: str = option(
        "us-east-1",
        parse=text,
        metavar="REGION",
        commands=STORE,
        help="Region used to sign S3 requests.",
    )
    s3_access_key: str | None = option(
        None,
        parse=optional(text),
        metavar="KEY",
        commands=STORE,
        help="S3 access key; without keys, requests are unsigned.",
        doc="`AWS_*` variables and `~/.aws` are not read.",
    )
    s3_secret_key: str | None = option(
        None,
        parse=optional(text),
        metavar="KEY",
        commands=STORE,
        help="S3 secret key; prefer the environment variable.",
        doc="Command lines are visible to other users in `ps`.",
    )
    s3_secure: bool = option(
        True,
        parse=boolean,
        commands=STORE,
        help="Use HTTPS to reach the S3 endpoint.",
    )
    s3_create_bucket: bool = option(
        False,
        parse=boolean,
        commands=STORE,
        help="Create the bucket at start if it does not exist.",
        doc="Without it, a missing bucket stops the server at start.",
    )
    s3_part_size: int = option(
        8 * 1024 * 1024,
        parse=s3_part_size,
        metavar="BYTES",
        shown_default="`8388608` (8 MiB)",
        commands=STORE,
        help="Preferred S3 part size in bytes, from `5242880` (5 MiB) to `5368709120` (5 GiB).",
        doc="An upload of known length gets a larger part size (in whole MiB) if it would "
        "otherwise need more than 10,000 parts. An upload of deferred length can hold at most "
        "10,000 parts of this size (83,886,080,000 bytes with the default).",
    )
    s3_max_concurrent_parts: int = option(
        16,
        parse=positive_int,
        metavar="N",
        commands=STORE,
        help="Part and fragment uploads in flight at once in this process, at least `1`; "
        "each one holds a part in memory.",
    )
    max_buffer_memory: int = option(
        256 * 1024 * 1024,
        parse=whole_number(5 * 1024 * 1024),
        metavar="BYTES",
        shown_default="`268435456` (256 MiB)",
        commands=STORE,
        help="Bytes of S3 part and fragment buffers in this process, all requests together, "
        "at least `--s3-part-size`; a request that finds them taken waits for one, its "
        "socket paused, up to `--buffer-wait-timeout`.",
        doc="Each request's buffer is sized to what its part can still receive: at most "
        "`--s3-part-size`, less when the upload's remaining length is smaller. The default "
        "holds 32 parts of 8 MiB (or 128 uploads of 2 MiB) at once: the 16 that "
        "`--s3-max-concurrent-parts` sends at a time and as many being filled; more would "
        "only wait for a part upload. See [storage.md](storage.md#memory).",
    )
    buffer_wait_timeout: float = option(
        60.0,
        parse=seconds,
        metavar="SECONDS",
        commands=STORE,
        help="Seconds a request waits for an S3 part buffer (see `--max-buffer-memory`) before "
        "it answers `503` with `Retry-After: 5`; `0` answers at once.",
        doc="The upload's offset does not move: the client resumes from it later. A request "
        "waits only for its first buffer, before any of its bytes is stored; the line moves "
        "as fast as the store takes parts (1,000 concurrent uploads of 2 MiB waited up to "
        "25 s on a 2-CPU machine).",
    )

    # the state database
    database_url: str | None = option(
        None,
        parse=optional(text),
        metavar="URL",
        shown_default="SQLite at `<data-dir>/tusd.db`",
        commands=COMMANDS,
        help="State database as an SQLAlchemy URL: "
        "`postgresql+psycopg://user:password@host:5432/db` (plain `postgresql://` is accepted) "
        "or `sqlite:///path/to/file.db`.",
    )
    db_pool_size: int = option(
        20,
        parse=positive_int,
        metavar="N",
        commands=[SERVE],
        help="PostgreSQL connections per process for the statements every request makes, "
        "at least `1`; a quarter of it (at least 2) is kept besides for the rest.",
        doc="Ignored for SQLite. See [deployment.md](deployment.md#pool-sizing).",
    )
    db_max_overflow: int = option(
        30,
        parse=non_negative_int,
        metavar="N",
        commands=[SERVE],
        help="Extra PostgreSQL connections a process may open under load (closed when "
        "returned), at least `0`.",
        doc="PostgreSQL's `max_connections` must exceed the number of processes "
        "times (pool size + overflow); "
        "see [deployment.md](deployment.md#pool-sizing).",
    )
    db_pool_timeout: float = option(
        5.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a request waits for a free database or Redis connection before it "
        "answers `503`.",
        doc="A Redis cache read uses the database instead.",
    )

    # hooks (docs/hooks.md)
    hooks_module: str | None = option(
        None,
        parse=optional(text),
        metavar="MODULE",
        commands=[SERVE],
        help="A Python module (`package.module`, importable by the server) whose functions "
        "named after hook points (`pre_access`, `pre_create`, `pre_terminate`) are called "
        "at those points.",
        doc="A function takes the event (a dict) and returns `None`, an answer dict, or "
        "raises `tusd_py.events.Reject`; it may be `async`. See [hooks.md](hooks.md).",
    )
    hooks_url: str | None = option(
        None,
        parse=optional(web_url),
        metavar="URL",
        commands=[SERVE],
        help="A URL that gets each hook's event as a JSON `POST` (header `Hook-Name`) and "
        "answers `2xx` with an answer object, or an empty body to go on.",
        doc="Called after `--hooks-module`'s function for the same point, if any.",
    )
    hooks_enabled: tuple[str, ...] = option(
        (),
        parse=hook_points,
        metavar="POINTS",
        commands=[SERVE],
        shown_default="every point `--hooks-module` has a function for; for `--hooks-url` "
        "every point but `pre-access`",
        help="Comma-separated hook points to call (`pre-access,pre-create,pre-terminate`).",
        doc="`pre-access` runs before every request to an upload or the creation URL, so a "
        "webhook gets it only when named here.",
    )
    hooks_timeout: float = option(
        5.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a hook call may take, retries included; then the request answers "
        "`500 ERR_HOOK_FAILED` and changes nothing.",
    )
    hooks_retries: int = option(
        2,
        parse=non_negative_int,
        metavar="N",
        commands=[SERVE],
        help="Further tries of a `--hooks-url` call that could not connect or got a `5xx`, "
        "100 ms apart and doubling, within `--hooks-timeout`.",
    )
    hooks_progress_interval: float = option(
        1.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds between two `post-receive` events of one upload while its bytes arrive.",
    )
    events_keep_delivered: float = option(
        7 * 24 * 3600.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a delivered event stays in the outbox (for `tusd-py events list "
        "--status delivered`) before it is deleted. Pending and failed events are never "
        "deleted by themselves.",
    )
    hooks_forward_headers: tuple[str, ...] = option(
        (),
        parse=header_names,
        metavar="NAMES",
        commands=[SERVE],
        help="Comma-separated request headers (`authorization,cookie`) sent on with each "
        "`--hooks-url` call, as headers of that call.",
        doc="Every hook also finds all of the request's headers in the event's `request.headers`.",
    )

    events_redis_stream: str | None = option(
        None,
        parse=optional(text),
        metavar="NAME",
        commands=[SERVE],
        help="Append each notifying event (`post-create`, `post-finish`, `post-terminate`) "
        "to this Redis stream (XADD) on `--redis-url`, for workers that read it with "
        "consumer groups.",
        doc="Entries have the fields `id`, `type` and `event` (JSON); the stream is trimmed "
        "to about a million entries. See [hooks.md](hooks.md#a-redis-stream).",
    )

    # several processes and hosts
    redis_url: str | None = option(
        None,
        parse=optional(text),
        metavar="URL",
        commands=STORE,
        help="Redis for the shared upload cache, the upload locks and the handover channel: "
        "`redis://[:password@]host:6379/0`, or `rediss://` for TLS.",
        doc="Needed to run several hosts on one database; without it the locks are shared by "
        "the processes of this host that use the same `--data-dir`, and each process keeps "
        "its own cache. See [deployment.md](deployment.md).",
    )
    redis_pool_size: int = option(
        200,
        parse=redis_pool_size,
        metavar="N",
        commands=[SERVE],
        help="Redis connections per process, at least `2`: the handover channel holds one.",
    )
    cache_ttl: float = option(
        3600.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="With `--redis-url`: seconds an upload's state stays in the Redis cache after its "
        "last write; `0` switches that cache off (every HEAD reads the database).",
        doc="Without Redis, the in-process cache is used and this option does nothing.",
    )
    cache_entries: int = option(
        100_000,
        parse=positive_int,
        metavar="N",
        commands=[SERVE],
        help="Without `--redis-url`: uploads whose state the in-process cache keeps, at least `1`.",
        doc="When it is full, the upload used least recently is dropped; a HEAD of a dropped "
        "upload reads the database.",
    )
    workers: int = option(
        1,
        parse=positive_int,
        metavar="N",
        commands=[SERVE],
        help="Server processes on this host, at least `1`.",
        doc="Each builds its own application and pools from the same settings. Without "
        "`--redis-url` they share upload locks through `DATA_DIR/locks` (record locks on one "
        "file, handover through a socket per process), and each believes its memory of an "
        "upload only while no other process has held it since; with it, through Redis. "
        "Processes on other hosts need Redis.",
    )
    header_timeout: float = option(
        30.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a client may take to send a request's line and headers; then it gets "
        "`408` and the connection is closed. `0` means no deadline.",
        doc="Protects against clients that open connections and trickle headers (slow loris). "
        "A new connection that sends nothing gets the same deadline.",
    )
    read_ahead_memory: int = option(
        16 * 1024 * 1024,
        parse=whole_number(64 * 1024),
        metavar="BYTES",
        shown_default="`16777216` (16 MiB)",
        commands=[SERVE],
        help="Bytes of request bodies the server may hold before the requests ask for them, "
        "all connections together, at least `65536`; with `--workers N` each process gets "
        "an Nth. Past it, connections pause until their requests read what they have.",
        doc="Each connection also stops reading at 1 MiB of its own, and connections between "
        "requests wait before reading their next one. A request that is reading always gets "
        "its bytes; the bound applies to requests that wait (for a lock, a database "
        "connection or an S3 part buffer). With the file store, as many bytes again may "
        "wait in each process to be written to disk. Measured with 1,000 concurrent uploads "
        "on 2 workers (docs/benchmarks.md): peak memory follows this figure, throughput "
        "hardly does.",
    )
    body_idle_timeout: float = option(
        60.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a request body may stay silent while the server waits for it; then the "
        "request ends as if the connection had dropped: the bytes that arrived are kept (a "
        "resume continues from them) and the connection is closed. `0` means no deadline.",
        doc="A client that stops sending would otherwise hold its upload's lock, and with S3 "
        "a part buffer, until the operating system notices the dead connection (hours). The "
        "clock runs only while the server is ready to read: time the server itself spends "
        "(a paused socket, a lock wait, `Expect: 100-continue`) does not count.",
    )
    shutdown_timeout: float = option(
        10.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="On SIGTERM or SIGINT: seconds requests in flight get to finish. Uploads in flight "
        "stop reading at once, save what they received and answer with their offset; new "
        "writes get `503` and `/ready` answers `503`. Then the process exits with `0`.",
    )
    lock_acquire_timeout: float = option(
        20.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="Seconds a request waits for an upload that another request holds and does not "
        "let go of, before it answers `423` with `Retry-After: 2`.",
    )
    lock_handover_timeout: float = option(
        3.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[SERVE],
        help="With `--redis-url`: seconds a holder on another instance gets to let go before it "
        "is asked again.",
        doc="The waiting request looks every 10 ms during this time, every 100 ms after it.",
    )

    # admission control: refusals before any body byte is read (deployment.md)
    max_concurrent_uploads: int = option(
        0,
        parse=non_negative_int,
        metavar="N",
        commands=[SERVE],
        help="Requests carrying upload bytes (PATCH, POST with a body) one process takes at "
        "once; more answer `503 ERR_TOO_MANY_UPLOADS` with `Retry-After`. `0` means no cap.",
        doc="A slow client holds its slot while it sends, and one that stops sending holds it "
        "until `--body-idle-timeout`; see "
        "[deployment.md](deployment.md#admission-control) before setting a low cap.",
    )
    max_memory: int = option(
        0,
        parse=non_negative_int,
        metavar="BYTES",
        commands=[SERVE],
        help="Resident memory of the process above which creations and upload bytes answer "
        "`503 ERR_MEMORY_PRESSURE` with `Retry-After`. `0` means no bound.",
        doc="Read from `/proc/self/statm` (Linux) at most every 100 ms. HEAD, GET and DELETE "
        "go on, and requests already receiving are not interrupted.",
    )
    rate_limit: float = option(
        0.0,
        parse=non_negative_number,
        metavar="R",
        commands=[SERVE],
        help="Requests per second one client may send on average; more answer "
        "`429 ERR_RATE_LIMITED` with `Retry-After`. `0` means no limit.",
        doc="The client is the remote address, or with `--behind-proxy` the first address of "
        "`Forwarded: for=` or `X-Forwarded-For`. With `--redis-url` the budget is shared by "
        "all instances (if Redis cannot be reached, each instance counts alone). CORS "
        "preflights, `/health`, `/ready` and `/metrics` are not counted. tus-js-client gives "
        "up on a 429 unless told otherwise; Uppy waits and retries.",
    )
    rate_limit_burst: int = option(
        0,
        parse=non_negative_int,
        metavar="N",
        shown_default="`0`: one second's worth (the rate, at least 1)",
        commands=[SERVE],
        help="Requests a client may send at once before `--rate-limit` slows it down.",
        doc="Does nothing without `--rate-limit`.",
    )
    min_free_disk: int = option(
        256 * 1024 * 1024,
        parse=non_negative_int,
        metavar="BYTES",
        shown_default="`268435456` (256 MiB)",
        commands=[SERVE],
        help="With the file store: free bytes on the uploads' filesystem below which upload "
        "bytes answer `507 ERR_INSUFFICIENT_STORAGE` with `Retry-After` and `/ready` answers "
        "`503`. `0` turns the check off.",
        doc="A creation whose `Upload-Length` does not fit in the free space above this reserve "
        "is refused the same way. Free space is read at most once a second. S3 storage does "
        "not use it.",
    )

    # gc
    orphan_age: float = option(
        3600.0,
        parse=seconds,
        metavar="SECONDS",
        commands=[GC],
        help="How old an orphan (what the store holds that no upload record needs) must be "
        "before `gc` removes it.",
        doc="With the file store: files in `<data-dir>/uploads/` whose upload the database "
        "does not keep (never recorded because the server died between creating the file and "
        "writing its row, or terminated or expired and not removed); names that are not "
        "upload ids are left alone. With S3: multipart uploads under the prefix that no "
        "upload record names, the fragments of uploads that are no longer receiving, and "
        "objects of uploads that were terminated, expired or never recorded. See "
        "[storage.md](storage.md#garbage-collection). Run gc against the database the server "
        "uses, and keep this at a few seconds at least: a younger file may belong to a "
        "creation whose row is still being written.",
    )
    max_idle: float | None = option(
        None,
        parse=optional(seconds),
        metavar="SECONDS",
        aliases=["--expiration"],
        shown_default="none: only uploads past their deadline",
        commands=[GC],
        help="Also reclaim unfinished uploads idle for longer than this many seconds, whatever "
        "deadline they were given.",
        doc="`--expiration` is another name for it (not `serve --expiration`: this one has its "
        "own environment variable, so a server's `TUSD_EXPIRATION` does not make `gc` reclaim "
        "more).",
    )

    log_level: str = option(
        "info",
        parse=OneOf(["critical", "error", "warning", "info", "debug"]),
        commands=COMMANDS,
        help="How much the log says.",
    )

    def __post_init__(self) -> None:
        for declared in OPTIONS:
            value = getattr(self, declared.name)
            try:
                object.__setattr__(self, declared.name, declared.parse(value))
            except ValueError as exc:
                raise ValueError(f"{declared.name}={value!r}: {exc}") from None
        endpoint = self.s3_endpoint
        for scheme, secure in (("https://", True), ("http://", False)):
            if endpoint.startswith(scheme):
                object.__setattr__(self, "s3_endpoint", endpoint[len(scheme) :].rstrip("/"))
                object.__setattr__(self, "s3_secure", secure)
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "--cors-allow-credentials needs an explicit --cors-origins list: with '*' any "
                "web page a signed-in user visits could send requests in that user's name"
            )
        if self.demo and self.base_path in ("/", "/demo/"):
            raise ValueError(
                f"--demo needs a --base-path other than {self.base_path}: the demo page is at / "
                "and its files under /demo/"
            )
        if self.events_redis_stream is not None and self.redis_url is None:
            raise ValueError(
                "--events-redis-stream needs --redis-url: the stream lives on that Redis"
            )
        if self.max_buffer_memory < self.s3_part_size:
            raise ValueError(
                f"--max-buffer-memory {self.max_buffer_memory} must hold at least one part "
                f"(--s3-part-size {self.s3_part_size})"
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
    def rate_limit_tokens(self) -> int:
        """The burst a client gets: --rate-limit-burst, or one second's worth."""
        return self.rate_limit_burst or max(1, math.ceil(self.rate_limit))

    @property
    def read_ahead_per_process(self) -> int:
        """Each worker's share of --read-ahead-memory (and, with the file store, of the
        bytes that may wait to be written)."""
        return max(self.read_ahead_memory // self.workers, 64 * 1024)

    @property
    def host_locks_dir(self) -> Path:
        """Where the worker processes of one host keep their upload locks (no Redis)."""
        return self.data_dir / "locks"

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


def _options() -> tuple[Option, ...]:
    return tuple(
        dataclasses.replace(f.metadata["option"], name=f.name) for f in dataclasses.fields(Settings)
    )


#: every option, in the order of the Settings fields (the order of --help and the docs)
OPTIONS: tuple[Option, ...] = _options()


def options_for(command: str) -> tuple[Option, ...]:
    return tuple(declared for declared in OPTIONS if command in declared.commands)


def environment_values(
    command: str, environ: Mapping[str, str], given: Collection[str] = ()
) -> dict[str, Any]:
    """The values of `command`'s options set by TUSD_<NAME> variables, leaving out the
    options in `given` (the command line wins). An empty variable counts as unset; a value
    the option refuses raises EnvironmentValueError naming the variable."""
    values: dict[str, Any] = {}
    for declared in options_for(command):
        raw = environ.get(declared.env, "")
        if declared.name not in given and raw != "":
            values[declared.name] = declared.parse_environment(raw)
    return values


def normalize_database_url(url: str) -> str:
    """The drivers we ship: psycopg for PostgreSQL (plain postgresql:// accepted), Python's
    sqlite3 for SQLite (an older sqlite+aiosqlite:// URL is accepted and means the same)."""
    for given, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite+aiosqlite://", "sqlite://"),
    ):
        if url.startswith(given):
            return driver + url[len(given) :]
    return url


# --- settings for the worker processes of `serve --workers N` --------------------------------

#: where `serve --workers N` hands its settings to the worker processes
SETTINGS_ENVIRONMENT = "TUSD__SETTINGS_JSON"


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def settings_to_json(settings: Settings) -> str:
    return json.dumps({o.name: _json_value(getattr(settings, o.name)) for o in OPTIONS})


def settings_from_json(raw: str) -> Settings:
    """The parsers take the JSON forms (text for a path or an enum, a list for a tuple)."""
    return Settings(**json.loads(raw))


def settings_from_environment() -> Settings:
    return settings_from_json(os.environ[SETTINGS_ENVIRONMENT])


# --- docs/configuration.md -----------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_SECTION = re.compile(r"(<!-- options:(\w+) -->\n)(.*?)(<!-- /options -->)", re.DOTALL)


def _cell(markdown: str) -> str:
    return markdown.replace("|", "\\|")


def _options_table(options: Iterable[Option]) -> str:
    rows = [
        "| Option | Environment | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for declared in options:
        names = [declared.flag, *declared.aliases]
        if declared.is_switch:
            names = [name for flag in names for name in (flag, "--no-" + flag[2:])]
        shown = " / ".join(f"`{name}`" for name in names)
        meaning = declared.help
        if declared.choices:
            meaning += " One of " + ", ".join(f"`{c}`" for c in declared.choices) + "."
        if declared.doc:
            meaning += " " + declared.doc
        cells = [shown, f"`{declared.env}`", declared.default_text, meaning]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def options_section(command: str) -> str:
    """The docs' text for one command's options: serve's whole table; for the other
    commands, a table of what only they take, then the options they share with serve."""
    if command not in COMMANDS:
        raise ValueError(f"no command {command!r} (the commands are {', '.join(COMMANDS)})")
    if command == SERVE:
        return _options_table(options_for(SERVE))
    own = [o for o in options_for(command) if SERVE not in o.commands]
    shared = [o for o in options_for(command) if SERVE in o.commands]
    parts = []
    if own:
        parts.append(_options_table(own))
    if shared:
        names = ", ".join(f"`{o.flag}`" for o in shared)
        parts.append(
            f"`{command}` also takes {names}, with the same meaning, default and environment "
            "variable as for `serve`.\n"
        )
    return "\n".join(parts)


def render_docs(document: str) -> str:
    """The document with every `<!-- options:COMMAND -->` section made from the options."""
    return _SECTION.sub(lambda m: m.group(1) + options_section(m.group(2)) + m.group(4), document)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tusd_py.config --write-docs` rewrites the options tables of
    docs/configuration.md; `--check-docs` says whether they are out of date."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["--write-docs"], ["--check-docs"]):
        print("usage: python -m tusd_py.config --write-docs | --check-docs", file=sys.stderr)
        return 2
    current = DOCS.read_text(encoding="utf-8")
    wanted = render_docs(current)
    if args == ["--check-docs"]:
        if wanted != current:
            print(f"{DOCS} is out of date: run python -m tusd_py.config --write-docs")
            return 1
        return 0
    if wanted != current:
        DOCS.write_text(wanted, encoding="utf-8")
        print(f"rewrote the options tables of {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
