"""The asyncio driver: carries out the flow's steps with httpx.AsyncClient (parallel pieces
as tasks). It behaves as sync.py does; file reads and hashing run in a worker thread, a
block at a time, so the event loop never waits on the disk. Cancel by cancelling the task."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import httpx

from .errors import UploadFailed
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


class AsyncTusClient:
    """TusClient's API with `await` (see sync.py)."""

    def __init__(
        self,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        resume_store: ResumeStore | str | None = "default",
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.headers = dict(headers or {})
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self.store: ResumeStore | None = (
            ResumeStore() if isinstance(resume_store, str) else resume_store
        )
        self.retry = retry or RetryPolicy()
        self.rng = random.Random()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncTusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def capabilities(self, endpoint: str) -> Capabilities:
        reply = await self._plain(Call("OPTIONS", endpoint, tus_headers(self.headers)))
        return Capabilities.from_reply(reply)

    async def upload(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        endpoint: str,
        options: UploadOptions | None = None,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> UploadResult:
        options = options or UploadOptions()
        options = replace(
            options,
            headers={**self.headers, **options.headers},
            retry=options.retry or self.retry,
        )
        opened = open_source(source)
        try:
            capabilities = await self.capabilities(endpoint)
            # the fingerprint reads two MiB of the file: off the loop
            plan = await asyncio.to_thread(
                UploadPlan, endpoint, opened, options, capabilities, self.store
            )
            progress = Progress(opened.size, on_progress, len(plan.jobs))
            flows = [UploadFlow(job, capabilities, random.Random()) for job in plan.jobs]
            # a piece that fails cancels the others (the group), and the error is raised
            async with asyncio.TaskGroup() as group:
                for index, flow in enumerate(flows):
                    group.create_task(self._run(flow, opened, index, plan, progress))
            if not plan.parallel:
                await asyncio.to_thread(plan.finished)
                return plan.result(flows, flows[0].url or "")
            return await self._join(plan, flows, opened)
        except BaseExceptionGroup as group:  # one piece's error, as the sync client raises it
            raise group.exceptions[0] from None
        finally:
            opened.close()

    async def _join(
        self, plan: UploadPlan, flows: list[UploadFlow], source: Source
    ) -> UploadResult:
        urls = [flow.url for flow in flows if flow.url is not None]
        final = plan.final_url
        if final is not None:
            reply = await self._plain(Call("HEAD", final, tus_headers(plan.options.headers)))
            if reply.status != 200:
                final = None
        if final is None:
            steps = create_final(plan.final_job(), urls, self.rng)
            final = await self._drive(steps, source, 0, None)
            await asyncio.to_thread(plan.final_created, final)
        await asyncio.to_thread(plan.finished)
        return plan.result(flows, final)

    async def _run(
        self, flow: UploadFlow, source: Source, index: int, plan: UploadPlan, progress: Progress
    ) -> str:
        def created(url: str) -> None:
            plan.created(index, url)

        def moved(done: int) -> None:
            progress.set(index, done)

        return await self._drive(flow.run(), source, flow.job.source_start, created, moved, flow)

    async def _drive(
        self,
        steps: Generator[Step, Reply | Filled | None, str],
        source: Source,
        base: int,
        on_created: Callable[[str], None] | None,
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
                answer = await self._call(step, source, base, on_moved)
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Created):
                if on_created is not None:
                    await asyncio.to_thread(on_created, step.url)
            elif isinstance(step, Read):
                answer = await asyncio.to_thread(source.fill, step.start, step.end)

    async def _call(
        self, call: Call, source: Source, base: int, on_moved: Callable[[int], None] | None
    ) -> Reply:
        headers = dict(call.headers)
        content: AsyncIterator[bytes] | None = None
        if call.body is not None:
            start, end = call.body.start + base, call.body.end + base
            if call.checksum:
                headers["Upload-Checksum"] = await asyncio.to_thread(
                    checksum_header, call.checksum, source.read_range(start, end)
                )
            headers["Content-Length"] = str(end - start)
            content = _body(source, start, end, call.body.start, on_moved)
        return await self._plain(call, headers, content)

    async def _plain(
        self,
        call: Call,
        headers: dict[str, str] | None = None,
        content: AsyncIterator[bytes] | None = None,
    ) -> Reply:
        try:
            async with self.http.stream(
                call.method, call.url, headers=headers or dict(call.headers), content=content
            ) as response:
                text = b""
                async for block in response.aiter_bytes():
                    text += block[: ANSWER_TEXT - len(text)]
                    if len(text) >= ANSWER_TEXT:
                        break
                return reply_of(response, text)
        except httpx.TransportError as exc:
            return no_answer(exc)

    # --- the rest ----------------------------------------------------------------------

    async def status(self, url: str) -> UploadInfo:
        return info_of(url, await self._retried(Call("HEAD", url, tus_headers(self.headers))))

    async def terminate(self, url: str) -> None:
        reply = await self._retried(Call("DELETE", url, tus_headers(self.headers)))
        if reply.status != 204:
            info_of(url, reply)
            raise UploadFailed(reply.status, f"HTTP_{reply.status}", "DELETE failed")

    async def _retried(self, call: Call) -> Reply:
        attempt = 0
        while True:
            reply = await self._plain(call)
            if not is_retryable(reply) or attempt >= self.retry.max_retries:
                return reply
            attempt += 1
            await asyncio.sleep(self.retry.delay(attempt, reply, self.rng))

    async def download(
        self,
        url: str,
        target: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> int:
        partial = await asyncio.to_thread(PartialDownload, Path(target), url)
        attempt = 0
        while True:
            headers = {**self.headers, **partial.request_headers()}
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    if is_retryable(Reply(response.status_code)):
                        raise TryAgain(f"status {response.status_code}")
                    start = await asyncio.to_thread(partial.begin, response)
                    if start is not None:
                        total = total_of(response, start)
                        with open(partial.part, "ab") as out:
                            async for block in response.aiter_bytes(BLOCK):
                                await asyncio.to_thread(out.write, block)
                                partial.have += len(block)
                                attempt = 0
                                if on_progress is not None:
                                    on_progress(partial.have, total)
                await asyncio.to_thread(partial.finish)
                return partial.have
            except (httpx.TransportError, TryAgain) as exc:
                attempt += 1
                if attempt > self.retry.max_retries:
                    raise UploadFailed(0, "ERR_NO_ANSWER", f"Downloading: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt, no_answer(exc), self.rng))


async def _body(
    source: Source, start: int, end: int, offset: int, on_moved: Callable[[int], None] | None
) -> AsyncIterator[bytes]:
    blocks = source.read_range(start, end)
    sent = 0
    while True:
        block = await asyncio.to_thread(next, blocks, None)
        if block is None:
            return
        yield block
        sent += len(block)
        if on_moved is not None:
            on_moved(offset + sent)
