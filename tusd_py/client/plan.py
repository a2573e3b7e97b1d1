"""One upload as the drivers run it: which flows (one, or N partials and a final), what the
resume store remembers of them, and the progress told to the caller. No I/O of its own but
the resume store's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .flow import Capabilities, RetryPolicy, UploadFlow, UploadJob, split
from .resume import Entry, ResumeStore, fingerprint
from .sources import FileSource, Source

#: progress(acknowledged or sent bytes, total bytes or None)
ProgressCallback = Callable[[int, int | None], None]
#: the smallest piece of a parallel upload (S3 stores need 5 MiB parts anyway)
MIN_PIECE = 5 * 1024 * 1024


@dataclass(frozen=True)
class UploadOptions:
    metadata: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: bytes per PATCH; None: the rest in one request (a stream: 8 MiB)
    chunk_size: int | None = None
    #: "auto" (xxh3 when the server lists it, else sha1), "none", or an algorithm
    checksum: str = "auto"
    #: pieces sent at once through concatenation (when the server offers it)
    parallel: int = 1
    #: look the file up in the resume store, and remember its upload there
    resume: bool = True
    #: None: the client's
    retry: RetryPolicy | None = None
    #: the first MiB with the POST (creation-with-upload), when the server offers it
    data_during_creation: bool = True


@dataclass(frozen=True)
class UploadResult:
    url: str
    size: int
    #: the offset the upload was resumed from (0: started anew)
    resumed_from: int
    #: the URLs of a parallel upload's partials
    partials: tuple[str, ...] = ()


class Progress:
    """Bytes done per piece (thread-safe), told to the caller as their sum."""

    def __init__(self, total: int | None, callback: ProgressCallback | None, pieces: int) -> None:
        self.total = total
        self.callback = callback
        self._done = [0] * pieces
        self._lock = threading.Lock()

    def set(self, piece: int, done: int) -> None:
        if self.callback is None:
            return
        with self._lock:
            self._done[piece] = done
            total = sum(self._done)
        self.callback(total, self.total)


class UploadPlan:
    def __init__(
        self,
        endpoint: str,
        source: Source,
        options: UploadOptions,
        capabilities: Capabilities,
        store: ResumeStore | None,
    ) -> None:
        self.endpoint = endpoint
        self.source = source
        self.options = options
        self.capabilities = capabilities
        self.size = source.size
        # only a file can be found again by a later run (a stream's bytes are gone)
        resumable = options.resume and isinstance(source, FileSource)
        self.store = store if resumable else None
        self.key = (
            fingerprint(source.path)
            if self.store is not None and isinstance(source, FileSource)
            else None
        )
        entry = self._remembered()
        base = UploadJob(
            endpoint=endpoint,
            size=self.size,
            metadata=options.metadata,
            headers=options.headers,
            chunk_size=options.chunk_size,
            checksum=options.checksum,
            retry=options.retry or RetryPolicy(),
            data_during_creation=options.data_during_creation,
        )
        self._base = base
        self.ranges = self._ranges()
        if self.ranges is None:
            self.jobs = [replace(base, resume_url=entry.url if entry else None)]
            self.partial_urls: list[str | None] = []
        else:
            same_pieces = entry is not None and len(entry.partials) == len(self.ranges)
            self.partial_urls = list(entry.partials) if entry and same_pieces else []
            self.partial_urls = self.partial_urls or [None] * len(self.ranges)
            self.jobs = [
                replace(
                    base,
                    size=end - start,
                    source_start=start,
                    metadata={},
                    concat="partial",
                    resume_url=self.partial_urls[index],
                )
                for index, (start, end) in enumerate(self.ranges)
            ]
        #: the final upload of a parallel upload, when an earlier run created it
        self.final_url = entry.url if entry and self.ranges is not None else None
        self._saving = threading.Lock()

    @property
    def parallel(self) -> bool:
        return self.ranges is not None

    def _ranges(self) -> list[tuple[int, int]] | None:
        if (
            self.options.parallel <= 1
            or self.size is None
            or "concatenation" not in self.capabilities.extensions
        ):
            return None
        ranges = split(self.size, self.options.parallel, MIN_PIECE)
        return ranges if len(ranges) > 1 else None

    def _remembered(self) -> Entry | None:
        if self.store is None or self.key is None:
            return None
        return self.store.find(self.key, self.endpoint)

    def final_job(self) -> UploadJob:
        """The job of the POST that joins a parallel upload's pieces: the upload's own
        (its endpoint, length, metadata, headers and retries)."""
        return self._base

    def result(self, flows: Sequence[UploadFlow], url: str) -> UploadResult:
        """What the caller is told once every flow (and, parallel, the join) is done."""
        pieces = tuple(flow.url for flow in flows if flow.url) if self.parallel else ()
        resumed = sum(flow.resumed_from for flow in flows)
        size = self.size if self.size is not None else (flows[0].length or 0)
        return UploadResult(url, size, resumed, pieces)

    # --- what the drivers report -----------------------------------------------------------

    def created(self, index: int, url: str) -> None:
        """Job `index` created its upload at `url`: remembered for a later run."""
        # pieces are created at once, from threads: each save must hold every URL known,
        # so the list is changed and written under one lock (else an older list could be
        # written last, and a piece be forgotten)
        with self._saving:
            if self.parallel:
                self.partial_urls[index] = url
                self._save(Entry(None, tuple(self.partial_urls)))
            else:
                self._save(Entry(url))

    def final_created(self, url: str) -> None:
        self.final_url = url
        self._save(Entry(url, tuple(self.partial_urls)))

    def finished(self) -> None:
        if self.store is not None and self.key is not None:
            self.store.forget(self.key, self.endpoint)

    def _save(self, entry: Entry) -> None:
        if self.store is not None and self.key is not None:
            self.store.save(self.key, self.endpoint, entry)
