"""The blocking driver: carries out the flow's steps with httpx.Client (parallel pieces in
threads). See flow.py for what is decided, and docs/client.md for the API."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import httpx

from .errors import Cancelled, UploadFailed
from .flow import (
    Call,
    Capabilities,
    Created,
    Filled,
    Pause,
    Read,
    Reply,
    RetryPolicy,
    Step,
    UploadFlow,
    create_final,
    is_retryable,
)
from .plan import Progress, ProgressCallback, UploadOptions, UploadPlan, UploadResult
from .resume import ResumeStore
from .sources import BLOCK, Source, open_source
from .wire import (
    ANSWER_TEXT,
    PartialDownload,
    TryAgain,
    UploadInfo,
    checksum_header,
    info_of,
    no_answer,
    reply_of,
    total_of,
    tus_headers,
)


class TusClient:
    """Uploads, queries, ends and downloads tus uploads, resuming where a run stopped.

    `headers` go on every request (say, Authorization). `resume_store`: where uploads are
    remembered for a later run (default: the user's cache directory; None: nowhere).
    """

    def __init__(
        self,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        resume_store: ResumeStore | str | None = "default",
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.headers = dict(headers or {})
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout))
        self.store: ResumeStore | None = (
            ResumeStore() if isinstance(resume_store, str) else resume_store
        )
        self.retry = retry or RetryPolicy()
        self.rng = random.Random()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- uploading ---------------------------------------------------------------------

    def capabilities(self, endpoint: str) -> Capabilities:
        reply = self._plain(Call("OPTIONS", endpoint, tus_headers(self.headers)))
        return Capabilities.from_reply(reply)

    def upload(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        endpoint: str,
        options: UploadOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> UploadResult:
        """Upload a file (a path) or a stream (a binary file object of unknown length).

        A file whose earlier upload the resume store remembers continues from the server's
        offset. `cancel` (set from another thread, or a signal handler) stops the upload
        between blocks: Cancelled is raised, and a new run resumes.
        """
        options = options or UploadOptions()
        options = replace(
            options,
            headers={**self.headers, **options.headers},
            retry=options.retry or self.retry,
        )
        opened = open_source(source)
        stop = cancel or threading.Event()
        try:
            capabilities = self.capabilities(endpoint)
            plan = UploadPlan(endpoint, opened, options, capabilities, self.store)
            progress = Progress(opened.size, on_progress, len(plan.jobs))
            if not plan.parallel:
                flow = UploadFlow(plan.jobs[0], capabilities, self.rng)
                url = self._run(flow, opened, 0, plan, progress, stop)
                plan.finished()
                return plan.result([flow], url)
            return self._parallel(plan, opened, capabilities, progress, stop)
        finally:
            opened.close()

    def _parallel(
        self,
        plan: UploadPlan,
        source: Source,
        capabilities: Capabilities,
        progress: Progress,
        cancel: threading.Event,
    ) -> UploadResult:
        flows = [UploadFlow(job, capabilities, random.Random()) for job in plan.jobs]
        # one piece failing (or the caller cancelling) stops the others; what they sent so
        # far stays on the server for a resume
        stop = threading.Event()
        with ThreadPoolExecutor(len(flows), thread_name_prefix="tus-piece") as pool:
            futures = [
                pool.submit(self._run, flow, source, index, plan, progress, stop)
                for index, flow in enumerate(flows)
            ]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                if cancel.is_set() or any(future.exception() for future in done):
                    stop.set()
        if cancel.is_set():
            raise Cancelled("the upload was cancelled")
        errors = [future.exception() for future in futures if future.exception()]
        if errors:
            raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])  # type: ignore[misc]
        urls = [flow.url for flow in flows if flow.url is not None]
        final = plan.final_url
        if final is not None:
            reply = self._plain(Call("HEAD", final, tus_headers(plan.options.headers)))
            if reply.status != 200:
                final = None  # gone since (expired): join again
        if final is None:
            steps = create_final(plan.final_job(), urls, self.rng)
            final = self._drive(steps, source, 0, None, cancel)
            plan.final_created(final)
        plan.finished()
        return plan.result(flows, final)

    def _run(
        self,
        flow: UploadFlow,
        source: Source,
        index: int,
        plan: UploadPlan,
        progress: Progress,
        cancel: threading.Event,
    ) -> str:
        def created(url: str) -> None:
            plan.created(index, url)

        def moved(done: int) -> None:
            progress.set(index, done)

        return self._drive(flow.run(), source, flow.job.source_start, created, cancel, moved, flow)

    def _drive(
        self,
        steps: Generator[Step, Reply | Filled | None, str],
        source: Source,
        base: int,
        on_created: Callable[[str], None] | None,
        cancel: threading.Event,
        on_moved: Callable[[int], None] | None = None,
        flow: UploadFlow | None = None,
    ) -> str:
        answer: Reply | Filled | None = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as stop:
                if flow is not None and on_moved is not None:
                    on_moved(flow.offset)
                return str(stop.value)
            if flow is not None and on_moved is not None:
                on_moved(flow.offset)  # what the server acknowledged, the answer read
            answer = None
            if isinstance(step, Call):
                answer = self._call(step, source, base, cancel, on_moved)
            elif isinstance(step, Pause):
                if cancel.wait(step.seconds):
                    raise Cancelled("the upload was cancelled")
            elif isinstance(step, Created):
                if on_created is not None:
                    on_created(step.url)
            elif isinstance(step, Read):
                answer = source.fill(step.start, step.end)

    def _call(
        self,
        call: Call,
        source: Source,
        base: int,
        cancel: threading.Event,
        on_moved: Callable[[int], None] | None = None,
    ) -> Reply:
        headers = dict(call.headers)
        content: Iterator[bytes] | None = None
        if call.body is not None:
            start, end = call.body.start + base, call.body.end + base
            if call.checksum:
                headers["Upload-Checksum"] = checksum_header(
                    call.checksum, source.read_range(start, end)
                )
            headers["Content-Length"] = str(end - start)
            content = self._body(source, start, end, call.body.start, cancel, on_moved)
        if cancel.is_set():
            raise Cancelled("the upload was cancelled")
        return self._plain(call, headers, content)

    def _plain(
        self,
        call: Call,
        headers: dict[str, str] | None = None,
        content: Iterator[bytes] | None = None,
    ) -> Reply:
        try:
            with self.http.stream(
                call.method, call.url, headers=headers or dict(call.headers), content=content
            ) as response:
                text = b""
                for block in response.iter_bytes():
                    text += block[: ANSWER_TEXT - len(text)]
                    if len(text) >= ANSWER_TEXT:
                        break
                return reply_of(response, text)
        except httpx.TransportError as exc:
            return no_answer(exc)

    @staticmethod
    def _body(
        source: Source,
        start: int,
        end: int,
        offset: int,
        cancel: threading.Event,
        on_moved: Callable[[int], None] | None,
    ) -> Iterator[bytes]:
        sent = 0
        for block in source.read_range(start, end):
            if cancel.is_set():
                raise Cancelled("the upload was cancelled")
            yield block
            sent += len(block)
            if on_moved is not None:
                on_moved(offset + sent)

    # --- the rest ----------------------------------------------------------------------

    def status(self, url: str) -> UploadInfo:
        """What the server says of an upload (HEAD)."""
        return info_of(url, self._retried(Call("HEAD", url, tus_headers(self.headers))))

    def terminate(self, url: str) -> None:
        """End an upload and free its bytes (DELETE)."""
        reply = self._retried(Call("DELETE", url, tus_headers(self.headers)))
        if reply.status != 204:
            info_of(url, reply)  # raises with the server's code and sentence
            raise UploadFailed(reply.status, f"HTTP_{reply.status}", "DELETE failed")

    def _retried(self, call: Call) -> Reply:
        attempt = 0
        while True:
            reply = self._plain(call)
            if not is_retryable(reply) or attempt >= self.retry.max_retries:
                return reply
            attempt += 1
            time.sleep(self.retry.delay(attempt, reply, self.rng))

    def download(
        self,
        url: str,
        target: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """GET a finished upload into `target`, resuming a partial `target.part` of an
        earlier run with Range (and If-Range, so a changed file starts over)."""
        partial = PartialDownload(Path(target), url)
        cancel = cancel or threading.Event()
        attempt = 0
        while True:
            headers = {**self.headers, **partial.request_headers()}
            try:
                with self.http.stream("GET", url, headers=headers) as response:
                    if is_retryable(Reply(response.status_code)):
                        raise TryAgain(f"status {response.status_code}")
                    start = partial.begin(response)
                    if start is not None:
                        total = total_of(response, start)
                        with open(partial.part, "ab") as out:
                            for block in response.iter_bytes(BLOCK):
                                if cancel.is_set():
                                    raise Cancelled("the download was cancelled")
                                out.write(block)
                                partial.have += len(block)
                                attempt = 0
                                if on_progress is not None:
                                    on_progress(partial.have, total)
                partial.finish()
                return partial.have
            except (httpx.TransportError, TryAgain) as exc:
                attempt += 1
                if attempt > self.retry.max_retries:
                    raise UploadFailed(0, "ERR_NO_ANSWER", f"Downloading: {exc}") from exc
                if cancel.wait(self.retry.delay(attempt, no_answer(exc), self.rng)):
                    raise Cancelled("the download was cancelled") from exc
