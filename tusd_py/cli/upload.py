"""The client's commands: `tusd-py upload`, `status`, `cancel` and `download`.

Like bench, these are clients: their options are their own (no TUSD_* settings of the
server), and they import only the client (tusd_py.client) and rich for the progress bar.
Exit statuses (docs/client.md):

  0  done
  1  the server refused (a 4xx other than the ones below; the message says why)
  2  bad arguments, or a file that cannot be read
  3  no answer, or the server kept failing, after every retry: run the same command again
     and it resumes
  4  the upload does not exist (404), is gone (410), or is not yours
  130 interrupted (Ctrl-C, SIGTERM): run the same command again and it resumes
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client (httpx) is imported when a client command runs, not before:
    # `tusd-py bench` must import nothing beyond the standard library
    from ..client import TusClient, UploadFailed

NAMES = ("upload", "status", "cancel", "download")
HELP = {
    "upload": "upload files to a tus server, resuming an earlier run's uploads",
    "status": "show what a tus server says of an upload",
    "cancel": "terminate an upload (DELETE)",
    "download": "download an upload to a file, resuming a partial download",
}
DONE, REFUSED, USAGE, UNREACHABLE, GONE, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_STATUSES = """exit status:
  0    done
  1    the server refused (the message says why)
  2    bad arguments, or a file that cannot be read
  3    no answer, or the server kept failing, after every retry: run it again to resume
  4    the upload does not exist, is gone, or is not yours
  130  interrupted (Ctrl-C, SIGTERM): run it again to resume"""


def _size(text: str) -> int:
    from ..loadgen import parse_size

    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def _pair(separator: str) -> Callable[[str], tuple[str, str]]:
    def convert(text: str) -> tuple[str, str]:
        key, found, value = text.partition(separator)
        if not found or not key.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY{separator}VALUE")
        return key.strip(), value.strip() if separator == ":" else value

    convert.__name__ = "pair"
    return convert


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--header",
        "-H",
        action="append",
        type=_pair(":"),
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every request (Authorization, say); repeatable",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (30)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=10,
        metavar="N",
        help="tries in a row without progress before giving up (10)",
    )


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "upload":
        parser.add_argument(
            "files", nargs="+", metavar="FILE", help="files to upload; - reads standard input"
        )
        parser.add_argument(
            "--endpoint", "-e", required=True, help="the creation URL, e.g. https://host/files/"
        )
        parser.add_argument(
            "--chunk-size",
            type=_size,
            metavar="BYTES",
            help="bytes per PATCH (default: the rest of the file; 32 MiB with checksums, "
            "8 MiB from standard input); KiB, MiB, GiB suffixes",
        )
        parser.add_argument(
            "--parallel",
            type=int,
            default=1,
            metavar="N",
            help="send N pieces at once and join them (concatenation), for files of 10 MiB+",
        )
        parser.add_argument(
            "--metadata",
            "-m",
            action="append",
            type=_pair("="),
            default=[],
            metavar="KEY=VALUE",
            help="Upload-Metadata (filename and filetype are set from the file); repeatable",
        )
        parser.add_argument(
            "--checksum",
            default="auto",
            metavar="ALG|none",
            help="per-request checksum (default: xxh3 if the server lists it, else sha1)",
        )
        parser.add_argument(
            "--no-resume",
            dest="resume",
            action="store_false",
            help="start new uploads; do not look up or remember earlier ones",
        )
        parser.add_argument(
            "--resume-store",
            metavar="PATH",
            default=os.environ.get("TUSD_PY_RESUME_STORE"),
            help="where uploads are remembered (default: ~/.cache/tusd-py/uploads.sqlite3; "
            "env TUSD_PY_RESUME_STORE)",
        )
    else:
        parser.add_argument("url", metavar="URL", help="the upload's URL")
    if name == "download":
        parser.add_argument(
            "--output", "-o", metavar="FILE", help="where to (default: the upload's filename)"
        )
    _common(parser)


def main(name: str, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"tusd-py {name}",
        description=HELP[name],
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(name, parser)
    args = parser.parse_args(argv)
    from ..client import Cancelled, ClientError, RetryPolicy, TusClient, UploadFailed

    client = TusClient(
        headers=dict(args.header),
        timeout=args.timeout,
        resume_store=None,
        retry=RetryPolicy(max_retries=args.retries),
    )
    try:
        with _interruptible() as stop:
            if name == "upload":
                return _upload(client, args, stop)
            if name == "download":
                return _download(client, args, stop)
            if name == "status":
                return _status(client, args.url)
            client.terminate(args.url)
            print(f"terminated {args.url}", file=sys.stderr)
            return DONE
    except Cancelled:
        print("tusd-py: interrupted; run the same command again to resume.", file=sys.stderr)
        return INTERRUPTED
    except UploadFailed as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return _status_of(exc)
    except (ClientError, OSError) as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        return USAGE
    finally:
        client.close()


def _status_of(exc: UploadFailed) -> int:
    if exc.status in (404, 410) or exc.code in ("ERR_NOT_FOUND", "ERR_GONE", "ERR_UPLOAD_GONE"):
        return GONE
    if exc.status == 0 or exc.status >= 500 or exc.status in (409, 423, 429):
        return UNREACHABLE
    return REFUSED


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set the event: the transfer stops between blocks, cleanly."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _upload(client: TusClient, args: argparse.Namespace, stop: threading.Event) -> int:
    from ..client import ResumeStore, UploadOptions

    store = ResumeStore(args.resume_store) if args.resume else None
    client.store = store
    for name in args.files:
        stream = name == "-"
        if not stream and not Path(name).is_file():
            print(f"tusd-py: {name} is not a file", file=sys.stderr)
            return USAGE
        metadata = {} if stream else _file_metadata(Path(name))
        metadata.update(dict(args.metadata))
        options = UploadOptions(
            metadata=metadata,
            chunk_size=args.chunk_size,
            checksum=args.checksum,
            parallel=args.parallel,
            resume=args.resume and not stream,
        )
        label = "stdin" if stream else Path(name).name
        total = None if stream else Path(name).stat().st_size
        with _progress(label, total) as progress:
            result = client.upload(
                sys.stdin.buffer if stream else name,
                args.endpoint,
                options,
                on_progress=progress,
                cancel=stop,
            )
        if result.resumed_from:
            print(
                f"{label}: resumed from {_human(result.resumed_from)} of {_human(result.size)}",
                file=sys.stderr,
            )
        print(result.url, flush=True)
    return DONE


def _file_metadata(path: Path) -> dict[str, str]:
    metadata = {"filename": path.name}
    kind, _ = mimetypes.guess_type(path.name)
    if kind:
        metadata["filetype"] = kind
    return metadata


def _download(client: TusClient, args: argparse.Namespace, stop: threading.Event) -> int:
    target = args.output
    if target is None:
        info = client.status(args.url)
        target = Path(info.metadata.get("filename") or args.url.rstrip("/").rsplit("/", 1)[-1])
        target = target.name  # never a path the server chose
    label = Path(target).name
    with _progress(label, None) as progress:
        size = client.download(args.url, target, on_progress=progress, cancel=stop)
    print(f"{target}: {_human(size)}", file=sys.stderr)
    print(target)
    return DONE


def _status(client: TusClient, url: str) -> int:
    info = client.status(url)
    length = "unknown (deferred)" if info.length is None else f"{info.length}"
    state = "complete" if info.complete else "incomplete"
    print(f"url:      {info.url}")
    print(f"offset:   {info.offset}")
    print(f"length:   {length}")
    print(f"state:    {state}")
    if info.expires:
        print(f"expires:  {info.expires}")
    if info.concat:
        print(f"concat:   {info.concat}")
    for key, value in sorted(info.metadata.items()):
        print(f"metadata: {key}={'' if value is None else value}")
    return DONE


# --- progress -------------------------------------------------------------------------------


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
    """A live bar (bytes, rate, time left) on a terminal; plain lines every 5 s otherwise."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(label, total=total)

            def update(done: int, size: int | None) -> None:
                bar.update(task, completed=done, total=size)

            yield update
        return
    state: dict[str, Any] = {"at": time.monotonic(), "done": -1, "since": time.monotonic()}

    def line(done: int, size: int | None) -> None:
        now = time.monotonic()
        if "first" not in state and done > 0:
            # a resumed upload's first figure is where it resumed: not this run's bytes
            # (a new upload's is its first MiB sent: near enough for a rate)
            state["first"], state["since"] = done, now
        complete = size is not None and done >= size
        if state["done"] == done or (now - state["at"] < 5 and not complete):
            return
        state["done"] = done
        state["at"] = now
        rate = (done - state.get("first", 0)) / max(now - state["since"], 1e-9)
        print(_line(label, done, size, rate), file=sys.stderr, flush=True)

    yield line


def _line(label: str, done: int, size: int | None, rate: float) -> str:
    of = "" if size is None else f" of {_human(size)} ({100 * done // max(size, 1)}%)"
    return f"{label}: {_human(done)}{of}, {_human(int(rate))}/s"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
